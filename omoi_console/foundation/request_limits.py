"""The request-body bound, enforced before Django reads a byte of the body.

Django's ASGI handler reads the whole body before any view or middleware runs,
and DRF ignores a body sent without Content-Length (chunked). This wrapper
answers 413 for a declared length over the bound without reading it, reads a
chunked body only up to the bound, and hands Django a chunked body that fits
with its Content-Length set, so that DRF parses it like any other.
"""

import json

from django.conf import settings

from omoi_console.foundation.api.problems import PROBLEM_CONTENT_TYPE, problem


class BoundedRequestBody:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = body_limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await refuse(send, 400, "Content-Length must be a whole number of bytes.")
            if int(declared) > limit:
                return await refuse(send, 413, f"Request body exceeds {limit} bytes.")
            return await self.app(scope, receive, send)

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                return await refuse(send, 413, f"Request body exceeds {limit} bytes.")
            if not message.get("more_body", False):
                break
        if body:
            length = (b"content-length", str(len(body)).encode())
            scope = {**scope, "headers": [*scope["headers"], length]}
        return await self.app(scope, replay(bytes(body), receive), send)


def body_limit(path: str) -> int:
    """The bound for ``path``: MAX_REQUEST_BYTES, or its own in REQUEST_BODY_LIMITS (batches)."""
    return settings.REQUEST_BODY_LIMITS.get(path, settings.MAX_REQUEST_BYTES)


def replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards only a disconnect can come

    return replayed


async def refuse(send, status: int, detail: str, *, headers=(), close: bool = True) -> None:
    """Answer with problem JSON before the app (and its body reading) is reached.

    ``close`` (the default) ends the connection, for an answer sent while an
    unread body may still be arriving; without it the server discards a body
    that fits the bound and keeps the connection for the client's next request.
    """
    body = json.dumps(problem(status, detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *([(b"connection", b"close")] if close else []),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
