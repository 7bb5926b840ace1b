"""The ceiling: a constant answer in raw ASGI, served by the same server command line.

It reads the request body, as any handler must, and answers with a body of about
the heartbeat response's size; everything else a heartbeat costs is ours.
"""

BODY = (
    b'{"agent_id":"bench-worker-0001","state":"running",'
    b'"heartbeat_interval_seconds":5.0,"commands":[]}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
