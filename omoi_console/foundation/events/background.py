"""Dispatch off the committing thread, for loops that must keep their pace.

With eager Celery (embedded mode) a dispatch runs inline in whichever thread
committed the events. For a request that is the point (the gameday reads the
whole chain right after it). For the heartbeat check and the lean path's batch
writer it is not: a thousand failures would keep the check from ticking, and
the writer from answering heartbeats, for as long as their handlers take.
Inside ``dispatch_in_background()`` an eager hand-off goes to one background
thread instead, in order; a real broker hand-off is already asynchronous and
is left alone.

Hand-offs made while the thread is busy wait together: the ones still waiting
when it is free run as one call (``submit_batch``). A burst of commits (a
hundred heartbeats reporting failures in the same second) is then one dispatch
of a hundred events, whose handlers read once for all of them, instead of a
hundred dispatches one after another, each paying its own fixed cost.
"""

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import structlog
from django.db import close_old_connections, connections

log = structlog.get_logger(__name__)

_local = threading.local()
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
# Per function: the items handed over and not yet taken by the thread.
_waiting: dict = {}


@contextlib.contextmanager
def dispatch_in_background():
    previous = getattr(_local, "background", False)
    _local.background = True
    try:
        yield
    finally:
        _local.background = previous


def wanted() -> bool:
    return getattr(_local, "background", False)


def submit(func, *args) -> None:
    with _executor_lock:
        _started().submit(_run, func, *args)


def submit_batch(func, items, *, limit: int) -> None:
    """Call ``func(items)`` on the background thread, together with items handed over since.

    Items that wait while the thread is busy join one call (in the order they
    came), at most ``limit`` a call.
    """
    with _executor_lock:
        waiting = _waiting.get(func)
        if waiting is not None:
            waiting.extend(items)
            return
        _waiting[func] = list(items)
        _started().submit(_run_waiting, func, limit)


def _started() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(1, thread_name_prefix="omoi-dispatch")
    return _executor


def _run_waiting(func, limit: int) -> None:
    with _executor_lock:
        items = _waiting.pop(func)
    for start in range(0, len(items), limit):
        _run(func, items[start : start + limit])


def _run(func, *args) -> None:
    close_old_connections()
    try:
        func(*args)
    except Exception:
        # The events stay pending: the sweeper hands them over again.
        log.exception("event.background_dispatch_failed")


def drain(timeout: float = 30.0) -> None:
    """Wait for what was handed off so far, then let the thread's connections go.

    For an orderly stop: nothing handed off is cut short, and no idle connection
    of the background thread outlives its user (a database being dropped waits
    for every session on it).
    """
    with _executor_lock:
        executor = _executor
    if executor is not None:
        executor.submit(connections.close_all).result(timeout)
