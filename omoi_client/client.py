"""``AsyncOmoiClient``: what an agent or an operator tool needs from the console, over HTTP."""

import asyncio
import contextlib
import gzip
import json
import math
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from urllib.parse import quote

import httpx
import structlog

from omoi_client.buffer import Batch, Counters, SampleBuffer
from omoi_client.errors import (
    ApiError,
    BatchRejected,
    ConnectionFailed,
    OmoiError,
    RequestRejected,
    Unavailable,
    UnexpectedResponse,
)
from omoi_client.results import (
    AnomalySummary,
    FleetSummary,
    HeartbeatReply,
    IngestResult,
    MetricSpec,
    QueryResult,
    Series,
    TopResult,
    parsed,
    problems_of,
)
from omoi_client.retrying import (
    RETRIED_STATUSES,
    Clock,
    RetryableStatus,
    RetryPolicy,
    Sleep,
    retry_after_seconds,
    retrying,
)

log = structlog.get_logger("omoi_client")

INGEST_PATH = "/api/v1/metrics/ingest"
# Answers that condemn a batch itself: sending it again cannot succeed.
BATCH_REFUSED = frozenset({400, 413, 415, 422})
PAGINATION_KEYS = ("count", "next", "previous", "results")
# At most this many of a refused batch's problems go into the log line.
LOGGED_PROBLEMS = 10


class AsyncOmoiClient:
    """Talk to an Omoi Console at ``base_url`` with a bearer ``token`` (agent or operator).

    Samples given to ``record`` wait in a bounded buffer and leave in batches,
    when ``batch_size`` are waiting or the oldest has waited ``flush_interval``
    seconds (a background task does this while an event loop runs; with
    ``background=False`` only ``flush`` sends). Batches above ``gzip_threshold``
    bytes are compressed. ``clock`` and ``sleep`` measure and spend the client's
    time (retry waits, the flush interval); tests pass fakes.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        batch_size: int = 1000,
        flush_interval: float = 5.0,
        buffer_limit: int = 100_000,
        gzip_threshold: int = 32 * 1024,
        background: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ):
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        self.retry = retry or RetryPolicy()
        self.counters = Counters()
        self.flush_interval = flush_interval
        self.gzip_threshold = gzip_threshold
        self.background = background
        # The most recent batch the console refused, for a caller of the background sender.
        self.last_rejection: BatchRejected | None = None
        self._token = token
        self._clock = clock
        self._sleep = sleep
        self._buffer = SampleBuffer(buffer_limit, batch_size, self.counters)
        # Not following redirects keeps the token from travelling to another host.
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._sender: asyncio.Task | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncOmoiClient({str(self._http.base_url)!r})"

    async def __aenter__(self) -> "AsyncOmoiClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def set_token(self, token: str) -> None:
        """Use a new token from now on (after the agent's token was recycled)."""
        self._token = token

    @property
    def buffered(self) -> int:
        """Samples recorded and not yet confirmed by the console."""
        return len(self._buffer)

    # -- agents -----------------------------------------------------------------------

    async def heartbeat(
        self,
        agent_id: str,
        state: str,
        *,
        current_task: str | None = None,
        progress: float | None = None,
        acks: Iterable[int] = (),
        generation: int | None = None,
    ) -> HeartbeatReply:
        """Report the agent alive; the reply carries the commands it must carry out.

        ``generation`` is the ``generation`` of the last restart command the agent
        obeyed (0 before any): echoing it keeps a failure reported before a
        restart from counting against the restart.
        """
        body: dict = {"state": state}
        if current_task is not None:
            body["task_id"] = current_task
        if progress is not None:
            body["progress"] = progress
        acks = list(acks)
        if acks:
            body["acks"] = acks
        if generation is not None:
            body["generation"] = generation
        path = f"/api/v1/agents/{quote(agent_id, safe='')}/heartbeat"
        response = await self._request("POST", path, json=body)
        return parsed(HeartbeatReply, self._json(response))

    def record(
        self,
        name: str,
        value: float,
        labels: Mapping[str, str] | None = None,
        ts: float | datetime | None = None,
    ) -> None:
        """Buffer one sample (``ts`` defaults to now); it leaves with a later batch."""
        if self._closed:
            raise RuntimeError("the client is closed")
        sample = {
            "name": name,
            "labels": dict(labels or {}),
            "ts": _unix_seconds(ts),
            "value": _finite(value),
        }
        self._buffer.add(sample, self._clock())
        waiting = self._buffer.waiting()
        if (
            self.background
            and self._start_sender()
            and (waiting == 1 or waiting >= self._buffer.batch_size)
        ):
            self._wake.set()

    async def flush(self) -> int:
        """Send what is buffered now; the number of samples the console confirmed.

        Raises ``BatchRejected`` for a refused batch (dropped from the buffer; the
        rest stays), ``Unavailable`` or ``ConnectionFailed`` once retries are spent
        (everything stays buffered for the next try).
        """
        sent = 0
        async with self._send_lock():
            rounds = math.ceil(len(self._buffer) / self._buffer.batch_size) + 1
            while len(self._buffer) and rounds:
                sent += await self._send_next()
                rounds -= 1
        return sent

    async def aclose(self) -> None:
        """Stop the background sender, send what is buffered, close the connections.

        Samples that still cannot be sent once retries are spent are counted as
        dropped and logged; closing does not raise for them.
        """
        if self._closed:
            return
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        try:
            while len(self._buffer):
                with contextlib.suppress(BatchRejected):
                    await self.flush()
        except OmoiError as exc:
            lost = self._buffer.clear()
            self.counters.dropped += lost
            log.error("client.closed_with_unsent_samples", samples=lost, error=str(exc))
        finally:
            await self._http.aclose()

    # -- operators --------------------------------------------------------------------

    async def catalog(self) -> list[MetricSpec]:
        """Every metric the console stores."""
        body = self._json(await self._request("GET", "/api/v1/metrics/catalog"))
        if not isinstance(body, list):
            raise UnexpectedResponse("the catalogue is a list")
        return [parsed(MetricSpec, entry) for entry in body]

    async def series(
        self,
        metric: str | None = None,
        *,
        agent: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[Series]:
        """The series matching every filter given, across all pages."""
        params = _filters(metric=metric, agent=agent, labels=labels)
        found = []
        async for _envelope, payload in self._pages("/api/v1/metrics/series", params):
            if not isinstance(payload, list):
                raise UnexpectedResponse("a page of series is a list")
            found += [parsed(Series, entry) for entry in payload]
        return found

    async def query(
        self,
        metric: str,
        *,
        start: float | datetime,
        end: float | datetime,
        step: float,
        agg: str = "avg",
        labels: Mapping[str, str] | None = None,
    ) -> QueryResult:
        """``metric`` aggregated by ``agg`` per ``step`` seconds, per series, all pages merged."""
        params = [
            *_filters(metric=metric, labels=labels),
            ("start", _time_param(start)),
            ("end", _time_param(end)),
            ("step", _number_param(step)),
            ("agg", agg),
        ]
        merged: dict | None = None
        async for envelope, payload in self._pages("/api/v1/metrics/query", params):
            meta = {k: v for k, v in envelope.items() if k not in PAGINATION_KEYS}
            if isinstance(payload, dict):
                meta.update(payload)
            series = payload if isinstance(payload, list) else meta.get("series", [])
            if merged is None:
                merged = {**meta, "series": list(series)}
            else:
                merged["series"] += series
        return parsed(QueryResult, merged)

    async def top(
        self, metric: str, *, agg: str = "avg", window: float = 300, k: int = 10, order="desc"
    ) -> TopResult:
        """The ``k`` agents with the highest (or lowest) ``agg`` of ``metric`` over ``window``."""
        params = [
            ("metric", metric),
            ("agg", agg),
            ("window", _number_param(window)),
            ("k", str(k)),
            ("order", order),
        ]
        body = self._json(await self._request("GET", "/api/v1/metrics/top", params=params))
        return parsed(TopResult, body)

    async def anomaly_summary(self, window: float = 3600) -> AnomalySummary:
        """Anomalies of the last ``window`` seconds, counted by metric, agent and severity."""
        params = [("window", _number_param(window))]
        body = self._json(await self._request("GET", "/api/v1/anomalies/summary", params=params))
        return parsed(AnomalySummary, body)

    async def fleet_summary(self) -> FleetSummary:
        """How many agents there are, by state and role, and the share that is healthy."""
        return parsed(FleetSummary, self._json(await self._request("GET", "/api/v1/fleet/summary")))

    # -- sending samples --------------------------------------------------------------

    def _send_lock(self) -> asyncio.Lock:
        # Made on first use, inside the event loop that will use it.
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _send_next(self) -> int:
        """Send the next batch (the cut one first); the samples confirmed."""
        batch = self._buffer.next_batch()
        if batch is None:
            return 0
        try:
            result = await self._post_batch(batch)
        except ApiError as exc:
            if exc.status not in BATCH_REFUSED:
                raise
            self._buffer.settle(batch)
            self.counters.rejected += len(batch)
            log.warning(
                "client.batch_rejected",
                status=exc.status,
                samples=len(batch),
                detail=exc.detail,
                problems=[vars(found) for found in exc.problems[:LOGGED_PROBLEMS]],
            )
            if isinstance(exc, RequestRejected):
                raise BatchRejected(
                    exc.status, exc.detail, problems=exc.problems, samples=batch.samples
                ) from None
            raise
        self._buffer.settle(batch)
        self.counters.sent += len(batch)
        if result.duplicate:
            log.info("client.batch_already_stored", samples=len(batch))
        return len(batch)

    async def _post_batch(self, batch: Batch) -> IngestResult:
        body = json.dumps(
            {"samples": list(batch.samples)}, separators=(",", ":"), allow_nan=False
        ).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": batch.key}
        if len(body) > self.gzip_threshold:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        response = await self._request("POST", INGEST_PATH, content=body, headers=headers)
        return parsed(IngestResult, self._json(response))

    def _start_sender(self) -> bool:
        """Start the background sender if an event loop runs here; whether one runs."""
        if self._sender is not None and not self._sender.done():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # no loop: samples wait for flush()
        if self._sender is not None and not self._sender.cancelled():
            failure = self._sender.exception()
            if failure is not None:
                log.error("client.sender_failed", error=repr(failure))
        self._wake = asyncio.Event()
        self._sender = loop.create_task(self._send_in_background())
        return True

    async def _send_in_background(self) -> None:
        while True:
            self._wake.clear()
            due_in = self._due_in()
            if due_in is None or due_in > 0:
                await self._wait(due_in)
                continue
            try:
                async with self._send_lock():
                    await self._send_next()
            except BatchRejected as exc:
                self.last_rejection = exc
            except OmoiError as exc:
                log.warning(
                    "client.send_failed",
                    error=type(exc).__name__,
                    detail=str(exc),
                    buffered=len(self._buffer),
                )
                # Retries are spent: rest before the next round, keeping every sample.
                await self._sleep(self.retry.cap)

    def _due_in(self) -> float | None:
        """Seconds until the next batch should leave; None while nothing waits."""
        if self._buffer.current is not None:
            return 0.0
        waiting = self._buffer.waiting()
        if not waiting:
            return None
        if waiting >= self._buffer.batch_size:
            return 0.0
        return max(0.0, self._buffer.oldest_at() + self.flush_interval - self._clock())

    async def _wait(self, delay: float | None) -> None:
        """Until ``record`` wakes the sender, or ``delay`` seconds have passed."""
        waits = {asyncio.ensure_future(self._wake.wait())}
        if delay is not None:
            waits.add(asyncio.ensure_future(self._sleep(delay)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    # -- HTTP -------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One request with retries; the response if it succeeded, else an OmoiError."""
        headers = kwargs.pop("headers", {})

        def retried(state) -> None:
            self.counters.retried += 1
            failure = state.outcome.exception()
            log.info(
                "client.retrying",
                method=method,
                path=path,
                attempt=state.attempt_number,
                wait_seconds=round(state.upcoming_sleep, 3),
                reason=_reason(failure),
            )

        try:
            async for attempt in retrying(
                self.retry, clock=self._clock, sleep=self._sleep, on_retry=retried
            ):
                with attempt:
                    response = await self._http.request(
                        method,
                        path,
                        headers={**headers, "Authorization": f"Bearer {self._token}"},
                        **kwargs,
                    )
                    if response.status_code in RETRIED_STATUSES:
                        hint = retry_after_seconds(response.headers.get("retry-after"))
                        raise RetryableStatus(response, hint)
        except RetryableStatus as exc:
            raise Unavailable(
                exc.response.status_code,
                _detail(exc.response),
                retry_after=exc.retry_after,
            ) from None
        except httpx.TransportError as exc:
            # Not chained: the httpx error holds the request, headers and all.
            raise ConnectionFailed(f"{method} {path}: {_reason(exc)}") from None
        if response.is_success:
            return response
        kind = RequestRejected if response.status_code == 422 else ApiError
        raise kind(
            response.status_code,
            _detail(response),
            problems=problems_of(_maybe_json(response)),
        )

    async def _pages(self, path: str, params: list[tuple[str, str]]):
        """``(envelope, payload)`` per page, following ``next`` on this console only."""
        while True:
            body = self._json(await self._request("GET", path, params=params))
            if isinstance(body, dict) and "results" in body:
                envelope, payload = body, body["results"]
            else:
                envelope, payload = (body if isinstance(body, dict) else {}), body
            yield envelope, payload
            following = envelope.get("next")
            if not following:
                return
            # Only the query of the link is taken: the token goes to base_url alone.
            params = list(httpx.URL(following).params.multi_items())

    @staticmethod
    def _json(response: httpx.Response):
        try:
            return response.json()
        except ValueError:
            raise UnexpectedResponse(f"{response.status_code} without a JSON body") from None


def _maybe_json(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        return None


def _detail(response: httpx.Response) -> str:
    body = _maybe_json(response)
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    return response.reason_phrase or "error"


def _reason(failure: BaseException | None) -> str:
    if isinstance(failure, RetryableStatus):
        return f"status {failure.response.status_code}"
    text = str(failure) if failure is not None else ""
    return f"{type(failure).__name__}: {text}" if text else type(failure).__name__


def _unix_seconds(ts: float | datetime | None) -> float:
    if ts is None:
        return time.time()
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError("a sample's time needs a zone (an aware datetime)")
        return ts.timestamp()
    return _finite(ts)


def _finite(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError("a sample's value and time are finite numbers")
    return value


def _filters(*, metric=None, agent=None, labels=None) -> list[tuple[str, str]]:
    params = []
    if metric is not None:
        params.append(("metric", metric))
    if agent is not None:
        params.append(("agent", agent))
    params += [("label", f"{name}:{value}") for name, value in (labels or {}).items()]
    return params


def _time_param(value: float | datetime) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("query times need a zone (an aware datetime)")
        return value.isoformat()
    return _number_param(value)


def _number_param(value: float) -> str:
    return repr(_finite(value)) if isinstance(value, float) else str(_finite(value))
