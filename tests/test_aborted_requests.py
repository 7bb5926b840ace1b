"""A request whose client goes away mid-way ends cleanly: no span left open, no error logged."""

import asyncio
import gc
import logging
import threading

from django.core.asgi import get_asgi_application
from django.http import HttpResponse
from django.urls import path

from observability.logging import structured_formatter

entered = threading.Event()
release = threading.Event()


def slow_view(request):
    entered.set()
    release.wait(10)
    return HttpResponse("too late")


urlpatterns = [path("slow", slow_view)]

SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "path": "/slow",
    "raw_path": b"/slow",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1")],
    "client": ("127.0.0.1", 40000),
    "server": ("127.0.0.1", 80),
    "scheme": "http",
}


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(structured_formatter("json"))
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def disconnect_while_the_view_runs() -> None:
    entered.clear()
    release.clear()
    app = get_asgi_application()

    async def serve():
        reads = 0

        async def receive():
            nonlocal reads
            reads += 1
            if reads == 1:
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.to_thread(entered.wait, 10)
            # The view finishes once Django has cancelled the request.
            asyncio.get_running_loop().call_later(0.1, release.set)
            return {"type": "http.disconnect"}

        async def send(message):
            pass

        # Django waits for the request's thread, so the whole chain has unwound here.
        await app(SCOPE, receive, send)

    asyncio.run(serve())


def test_it_ends_an_aborted_request_without_leaving_its_span_context_behind(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    records = Records()
    otel = logging.getLogger("opentelemetry.context")
    ours = logging.getLogger("omoi_console.foundation.middleware")
    otel.addHandler(records)
    ours.addHandler(records)
    ours.setLevel(logging.INFO)
    try:
        disconnect_while_the_view_runs()
        gc.collect()  # where an abandoned span context would be detached, in the wrong context
    finally:
        otel.removeHandler(records)
        ours.removeHandler(records)
        ours.setLevel(logging.NOTSET)

    assert entered.is_set(), "the view never ran: the request was refused before it"
    assert [r.getMessage() for r in records.records if r.levelno >= logging.ERROR] == []
    assert [r.msg["event"] for r in records.records] == ["http.request_aborted"]
