import asyncio
from concurrent import futures

import structlog
from django.core.exceptions import SuspiciousOperation
from django.http import HttpResponse

log = structlog.get_logger(__name__)

# nginx's status for a request whose client closed the connection before the answer.
CLIENT_CLOSED_REQUEST = 499


class RefuseNulInURL:
    """A URL with a NUL character is refused with 400 before any view looks it up.

    No stored text can hold NUL (Postgres refuses it outright), so a lookup by
    such a path or filter could only fail, as a database error. Reading the
    query here also applies Django's field-count bound to every request.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = request.GET
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in query.lists()
        ):
            raise SuspiciousOperation("NUL character in the URL")
        return self.get_response(request)


class EndAbortedRequest:
    """A request whose client went away ends here with a 499 response, not an exception.

    Under ASGI, Django cancels a request when its client disconnects, and the
    cancellation comes up through the synchronous middleware as an exception
    (``CancelledError`` is no ``Exception``, so no middleware turns it into a
    response). The tracing middleware outside this one then never ends the span
    it entered for the request; the span's context is left attached and is
    detached later by the garbage collector, in another context, which
    OpenTelemetry reports as an error ("Failed to detach context"). Answering
    499 (client closed request) lets every middleware outside this one finish
    the request in its own context; nobody reads the answer.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            return self.get_response(request)
        except (asyncio.CancelledError, futures.CancelledError):
            log.info("http.request_aborted", method=request.method, path=request.path)
            response = HttpResponse(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")
            # The line above says it; Django's own would be a warning about nothing.
            response._has_been_logged = True
            return response
