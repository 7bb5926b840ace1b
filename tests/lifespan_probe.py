"""An ASGI app that only notes its lifespan events, one line per event and process.

The tests run the Procfile's web line with this app in place of the real one, to
see which workers get lifespan startup and shutdown, and when. It loads no
Django, so its workers start in a fraction of a second.
"""

import os


def note(event: str) -> None:
    with open(os.environ["LIFESPAN_PROBE_LOG"], "a") as log:
        log.write(f"{event} {os.getpid()}\n")


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                note("startup")
                await send({"type": "lifespan.startup.complete"})
            else:
                note("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
