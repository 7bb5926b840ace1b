"""Every HTTP request's id and its access-log line, at the front of the ASGI app.

In front of everything, so the lean ingest paths are covered too: the request
id is taken from an incoming ``X-Request-ID`` when it is well-formed (bounded
length, safe characters), else made fresh; it is bound to the structlog context
for the request (Django's threads inherit it, so every line the request logs
names it), and returned in the response's ``X-Request-ID``.

The access log is one structured line per request through the ``omoi.access``
logger, in place of the server's plain-text one. Routine successes of the
ingest paths (heartbeats, metric batches: thousands a second) are not logged,
their failures are; 401 and 429 answers are counted and logged once per window
by the rate limits, so they are left out here too.
"""

import os
import re
import time

import structlog
from django.conf import settings
from structlog.contextvars import bind_contextvars, reset_contextvars

REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
INGEST_PATH = re.compile(r"/api/v1/agents/[^/]+/heartbeat|/api/v1/metrics/ingest|/v1/metrics")
COUNTED_ELSEWHERE = frozenset({401, 429})

access_log = structlog.get_logger("omoi.access")


def request_id_from(headers) -> str:
    """The client's request id when it is safe to echo and log, else a fresh one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    # 128 random bits, as a UUID4's hex but cheaper: this runs for every heartbeat.
    return os.urandom(16).hex()


def wants_access_line(path: str, status: int) -> bool:
    if status in COUNTED_ELSEWHERE:
        return False
    return status >= 400 or not INGEST_PATH.fullmatch(path)


class RequestContext:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = request_id_from(scope["headers"])
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        tokens = bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if settings.ACCESS_LOG and wants_access_line(scope["path"], status):
                client = scope.get("client")
                access_log.info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    client=client[0] if client else None,
                )
            reset_contextvars(**tokens)
