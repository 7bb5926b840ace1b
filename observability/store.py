"""The console's own recent spans and log lines, kept in its database.

A span processor on the tracer provider and a handler in LOGGING put finished
spans and log records in two bounded in-memory buffers; nothing on the request
path touches the database. A background thread (``Flusher``) drains them every
``TRACE_STORE_FLUSH_SECONDS``, or sooner once a buffer holds a batch, and writes
each buffer with one ``bulk_create`` in a short transaction of its own, on its
own connection. When a buffer is full the oldest entry makes way and is counted;
a batch the database refuses (SQLite busy past a short wait, Postgres away) is
dropped and counted too, rather than held up or retried into a backlog.

Log lines are stored as the formatter prints them: the event dict after the
shared processors, so redaction has already happened. The export to stdout and
to OTLP runs alongside, untouched.
"""

import atexit
import json
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import StatusCode

from observability import logging as structured

log = structlog.get_logger(__name__)

# Bounds of what one row keeps: a value longer than this is cut, and a row's
# attributes or fields stop at about this many characters of JSON.
MAX_VALUE_CHARS = 1000
MAX_JSON_CHARS = 8000
# A buffer that holds this many entries wakes the flusher before its interval.
WAKE_AT = 1000
# How long the flusher waits for a lock (SQLite's write lock, a PostgreSQL table
# lock) before it drops the batch.
LOCK_WAIT_MS = 1000
# Attribute and field names that tie a span or a line to a page of the console.
LINKS = {
    "agent_id": ("agent_id", "agent.id", "omoi.agent_id"),
    "alert_id": ("alert_id", "alert.id", "omoi.alert_id"),
    "action_id": ("action_id", "action.id", "omoi.action_id"),
}
LINK_LENGTHS = {"agent_id": 64, "alert_id": 32, "action_id": 32}
LOG_COLUMNS = ("trace_id", "span_id", "request_id", "agent_id", "alert_id", "action_id")
LOG_COLUMN_LENGTHS = {"trace_id": 32, "span_id": 16, "request_id": 64, **LINK_LENGTHS}
# Keys of the event dict that become columns, or that every line has anyway.
NOT_FIELDS = {"timestamp", "level", "logger", "event", *LOG_COLUMNS}


class Buffer:
    """A bounded queue of entries to store: when full, the oldest makes way, counted."""

    def __init__(self, name: str, capacity: int):
        self.name = name
        self.entries: deque = deque(maxlen=capacity)
        self.lock = threading.Lock()
        self.dropped = 0
        self.failed = 0
        self.written = 0

    def add(self, entry) -> None:
        with self.lock:
            if len(self.entries) == self.entries.maxlen:
                self.dropped += 1
            self.entries.append(entry)
            full = len(self.entries) >= WAKE_AT
        if full:
            flusher.wake()
        else:
            flusher.ensure_started()

    def drain(self) -> list:
        with self.lock:
            entries = list(self.entries)
            self.entries.clear()
        return entries

    def resize(self, capacity: int) -> None:
        with self.lock:
            self.entries = deque(self.entries, maxlen=capacity)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.dropped = self.failed = self.written = 0

    def reset_after_fork(self) -> None:
        # Another thread may have held the lock at the fork: the child takes a new one.
        self.lock = threading.Lock()
        self.entries = deque(maxlen=self.entries.maxlen)
        self.dropped = self.failed = self.written = 0

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {
                "buffered": len(self.entries),
                "dropped": self.dropped,
                "failed": self.failed,
                "written": self.written,
            }


# Set on a flusher's thread: what it does itself is not stored.
_flushing = threading.local()
spans = Buffer("spans", settings.TRACE_STORE_BUFFER)
lines = Buffer("logs", settings.TRACE_STORE_BUFFER)


# --- capture (on the caller's thread: memory only) ----------------------------------


class StoreSpanProcessor(SpanProcessor):
    """Keeps every finished span for the store; the span is immutable once ended."""

    def on_end(self, span: ReadableSpan) -> None:
        if getattr(_flushing, "active", False):
            return
        spans.add(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class StoreLogHandler(logging.Handler):
    """Keeps log records at its level and above for the store, as their event dicts."""

    def emit(self, record: logging.LogRecord) -> None:
        if not settings.TRACE_STORE:
            return
        try:
            lines.add((record.created, record.levelname, record.name, event_dict_of(record)))
        except Exception:
            self.handleError(record)


def event_dict_of(record: logging.LogRecord) -> dict:
    """The record's event dict after the shared processors (redaction included).

    A line from structlog carries it already processed as its message; a line
    from the standard library goes through the same chain as the formatter's.
    """
    event_dict = dict(record.msg) if isinstance(record.msg, dict) else _foreign_event_dict(record)
    if record.exc_info or event_dict.get("exc_info"):
        if record.exc_info:
            event_dict["exc_info"] = record.exc_info
        event_dict = structlog.processors.format_exc_info(None, "", event_dict)
    return event_dict


def _foreign_event_dict(record: logging.LogRecord) -> dict:
    event_dict = {"event": record.getMessage(), "_record": record, "_from_structlog": False}
    method = record.levelname.lower()
    try:
        for processor in structured.SHARED_PROCESSORS:
            event_dict = processor(None, method, event_dict)
    except Exception:
        # The line still reaches stderr through the formatter; here it keeps its text only.
        event_dict = {"event": record.getMessage()}
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    return event_dict


# --- writing (on the flusher's thread, or a test's) -----------------------------------


@dataclass(frozen=True)
class Flushed:
    spans: int
    logs: int


def flush(*, background: bool = False) -> Flushed:
    """Write what the buffers hold now, one short transaction per kind; never raises.

    The flusher calls it from its own thread (``background``: waits for locks
    only briefly); tests call it directly.
    """
    from observability.models import LogRecord, SpanRecord

    return Flushed(
        spans=_write(spans, SpanRecord, span_record, background),
        logs=_write(lines, LogRecord, log_record, background),
    )


def _write(buffer: Buffer, model, to_row, background: bool) -> int:
    entries = buffer.drain()
    if not entries:
        return 0
    rows = []
    for entry in entries:
        try:
            rows.append(model(**to_row(entry)))
        except Exception:
            # One entry that cannot be stored must not cost the whole batch.
            with buffer.lock:
                buffer.failed += 1
    try:
        if background and connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA busy_timeout = {LOCK_WAIT_MS}")
        with transaction.atomic():
            if background and connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}")
            model.objects.bulk_create(rows, batch_size=500)
    except DatabaseError as error:
        with buffer.lock:
            buffer.failed += len(rows)
        flusher.report_failure(buffer.name, len(rows), error)
        return 0
    with buffer.lock:
        buffer.written += len(rows)
    flusher.report_success(buffer.name)
    return len(rows)


def span_record(span: ReadableSpan) -> dict:
    context = span.context
    attributes = dict(span.attributes or {})
    status = {StatusCode.OK: "ok", StatusCode.ERROR: "error"}.get(span.status.status_code, "unset")
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else "",
        "name": text(span.name, 200),
        "kind": span.kind.name.lower(),
        "service": text(span.resource.attributes.get("service.name", ""), 100),
        "started_at": datetime.fromtimestamp(span.start_time / 1e9, UTC),
        "duration_ms": max(0, (span.end_time or span.start_time) - span.start_time) / 1e6,
        "status": status,
        "attributes": bounded(attributes),
        **{column: linked(attributes, column) for column in LINKS},
    }


def log_record(entry: tuple) -> dict:
    created, level, logger_name, event_dict = entry
    return {
        "at": datetime.fromtimestamp(created, UTC),
        "level": level.lower()[:10],
        "logger": text(event_dict.get("logger") or logger_name, 100),
        "event": text(event_dict.get("event", ""), 200),
        **{
            column: text(event_dict.get(column) or "", LOG_COLUMN_LENGTHS[column])
            for column in LOG_COLUMNS
        },
        "fields": bounded({k: v for k, v in event_dict.items() if k not in NOT_FIELDS}),
    }


def linked(attributes: dict, column: str) -> str:
    for key in LINKS[column]:
        value = attributes.get(key)
        if value not in (None, ""):
            return text(value, LINK_LENGTHS[column])
    return ""


def text(value, limit: int) -> str:
    # PostgreSQL refuses NUL in text; one such line would fail its whole batch.
    return str(value)[:limit].replace("\x00", "\ufffd")


def bounded(mapping: dict) -> dict:
    """The mapping as plain JSON, each value at most MAX_VALUE_CHARS, all about MAX_JSON_CHARS."""
    out: dict = {}
    size = 0
    for key, value in mapping.items():
        try:
            encoded = json.dumps(value, default=str, allow_nan=False)
        except (TypeError, ValueError):
            encoded = json.dumps(str(value))
        encoded = encoded.replace("\\u0000", "\\ufffd")
        if len(encoded) > MAX_VALUE_CHARS:
            encoded = json.dumps(encoded[:MAX_VALUE_CHARS] + "…")
        if size + len(encoded) > MAX_JSON_CHARS:
            out["_truncated"] = len(mapping) - len(out)
            break
        out[text(key, 100)] = json.loads(encoded)
        size += len(encoded) + len(key)
    return out


# --- the background flusher ------------------------------------------------------------


class Flusher:
    """One daemon thread per process that writes the buffers; started by the first entry.

    ``disable()`` stops it for good (the test suite flushes by hand); a forked
    child starts its own, with empty buffers.
    """

    def __init__(self):
        self.enabled = True
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self._reported_drops = 0

    def ensure_started(self) -> None:
        if self._thread is None and self.enabled:
            self.start()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or not self.enabled:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="omoi-store", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self.ensure_started()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is left and end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)

    def disable(self) -> None:
        self.enabled = False
        self.stop()

    def _run(self) -> None:
        _flushing.active = True
        while not self._stop.is_set():
            self._wake.wait(settings.TRACE_STORE_FLUSH_SECONDS)
            self._wake.clear()
            self._flush_once()
        self._flush_once()

    def _flush_once(self) -> None:
        if not apps.ready:
            # A line logged while Django starts: its models cannot be used yet.
            return
        # The flusher's own queries would otherwise become spans for it to store.
        try:
            with suppress_instrumentation():
                flush(background=True)
                self.report_drops()
        except Exception:
            log.exception("store.flush_failed")
        finally:
            connection.close()

    def report_drops(self) -> None:
        dropped = spans.dropped + lines.dropped
        if dropped > self._reported_drops:
            log.warning(
                "store.buffer_full",
                spans_dropped=spans.dropped,
                logs_dropped=lines.dropped,
                capacity=settings.TRACE_STORE_BUFFER,
            )
            self._reported_drops = dropped

    def report_failure(self, kind: str, rows: int, error: Exception) -> None:
        # Once per outage, not once per flush: the warning is itself a line to store.
        if kind not in self._failing:
            self._failing.add(kind)
            log.warning("store.write_failed", kind=kind, rows=rows, error=type(error).__name__)

    def report_success(self, kind: str) -> None:
        self._failing.discard(kind)

    def reset_after_fork(self) -> None:
        self._thread = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failing = set()
        self._reported_drops = 0
        spans.reset_after_fork()
        lines.reset_after_fork()


flusher = Flusher()
atexit.register(flusher.stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=flusher.reset_after_fork)


def stats() -> dict[str, dict[str, int]]:
    """Per buffer: entries waiting, dropped when full, failed to write, written."""
    return {"spans": spans.stats(), "logs": lines.stats()}
