"""``MetricBatchFastPath``: the ASGI front of ``POST /api/v1/metrics/ingest`` for agents.

A batch from an agent whose token this process has cached (every agent that
heartbeats) is parsed and stored here, on a pool of database threads, without
Django's request cycle: the same ``samples.ingest`` as the DRF view, so both
paths store and refuse alike. Anything else (an operator, a token not cached,
a body that is not plain JSON) goes to Django untouched or with its body
replayed, and Django answers it.
"""

from dataclasses import dataclass

import orjson
import structlog
from django.db import InterfaceError, OperationalError, connections

from monitoring import samples
from monitoring.ingest.asgi import JSON_TYPES, agent_token, answered, host_allowed, read_body
from monitoring.ingest.cache import ingest_cache, token_digest
from monitoring.ingest.runtime import current_runtime
from omoi_console.foundation.api.parsers import gunzip_bounded
from omoi_console.foundation.api.problems import (
    PROBLEM_CONTENT_TYPE,
    UNAVAILABLE_RETRY_AFTER_SECONDS,
    VALIDATION_TYPE,
    problem,
)
from omoi_console.foundation.request_limits import replay

log = structlog.get_logger(__name__)

INGEST_PATH = "/api/v1/metrics/ingest"
IDEMPOTENCY_KEY = b"idempotency-key"


class MetricBatchFastPath:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        admitted = admit(scope)
        if admitted is None:
            return await self.app(scope, receive, send)
        runtime = current_runtime()
        if not runtime.accepting:
            return await self.app(scope, receive, send)
        if isinstance(admitted, Unverified):
            # A token this process has not seen: one query verifies and caches it.
            if not await runtime.verify(admitted.raw, None):
                return await self.app(scope, receive, send)
            token = ingest_cache.token(token_digest(admitted.raw))
            if token is None:
                return await self.app(scope, receive, send)
            admitted = (token.agent_id, admitted.key, admitted.gzipped)
        agent_id, key, gzipped = admitted
        body = await read_body(receive)
        if body is None:
            return None  # the client left
        status, answer, headers = await runtime.run_batch(store_batch, body, gzipped, agent_id, key)
        if status is None:
            # Not plain JSON (or NaN in it): Django's parser says precisely what is wrong.
            return await self.app(scope, replay(body, receive), send)
        answered["lean_batches"] += 1
        await respond(send, status, answer, headers)
        return None


def admit(scope) -> "tuple[str, str | None, bool] | Unverified | None":
    """(agent id, idempotency key, gzipped) of a batch this path may take, else None."""
    if scope["type"] != "http" or scope["path"] != INGEST_PATH or scope["method"] != "POST":
        return None
    if scope.get("query_string"):
        return None
    authorization = content_type = host = key = None
    gzipped = False
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
        elif name == b"content-type":
            content_type = value.lower()
        elif name == b"host":
            host = value
        elif name == IDEMPOTENCY_KEY:
            key = value
        elif name == b"content-encoding":
            encoding = value.strip().lower()
            if encoding == b"gzip":
                gzipped = True
            elif encoding not in (b"", b"identity"):
                return None
    if authorization is None or content_type not in JSON_TYPES or not host_allowed(host):
        return None
    raw = agent_token(authorization)
    if raw is None:
        return None
    if key is not None:
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            return None
    token = ingest_cache.token(token_digest(raw))
    if token is None:
        return Unverified(raw, key, gzipped)
    return token.agent_id, key, gzipped


@dataclass(frozen=True)
class Unverified:
    """A batch this path could take once its agent token is verified."""

    raw: str
    key: str | None
    gzipped: bool


def store_batch(body: bytes, gzipped: bool, agent_id: str, key: str | None):
    """(status, answer, headers) for a batch; status None hands it to Django. In a thread."""
    from django.conf import settings
    from rest_framework.exceptions import APIException

    try:
        if gzipped:
            body = gunzip_bounded(body, settings.METRIC_MAX_DECOMPRESSED_BYTES)
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, ()
    except APIException as exc:
        return exc.status_code, problem(exc.status_code, str(exc.detail)), ()
    if not isinstance(data, dict) or set(data) != {"samples"}:
        rejected = samples.BatchRejected(
            [samples.Problem(None, "", 'The body is {"samples": [...]}.')]
        )
        return 422, rejected_problem(rejected), ()
    try:
        stored = samples.ingest(data["samples"], agent_id=agent_id, key=key)
    except samples.BatchRejected as exc:
        return 422, rejected_problem(exc), ()
    except (OperationalError, InterfaceError) as exc:
        connections.close_all()  # a broken connection must not serve the next batch
        log.warning("api.database_unavailable", error=type(exc).__name__, path=INGEST_PATH)
        detail = "The database is unavailable; try again later."
        retry = (b"retry-after", str(UNAVAILABLE_RETRY_AFTER_SECONDS).encode())
        return 503, problem(503, detail), (retry,)
    return 200, stored.as_dict(), ()


def rejected_problem(exc: samples.BatchRejected) -> dict:
    errors = [found.as_dict() for found in exc.problems]
    return problem(422, exc.detail, errors=errors, type_=VALIDATION_TYPE)


async def respond(send, status: int, answer: dict, headers=()) -> None:
    body = orjson.dumps(answer)
    content_type = b"application/json" if status < 400 else PROBLEM_CONTENT_TYPE.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
