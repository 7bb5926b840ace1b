"""Errors as RFC 9457 problem details (``application/problem+json``)."""

from http import HTTPStatus

import structlog
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from omoi_console.foundation.api.exceptions import RequestTooLarge

log = structlog.get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
VALIDATION_TYPE = "urn:omoi:problem:invalid-fields"


def problem(status: int, detail: str, *, errors: list | None = None, type_: str = "about:blank"):
    body = {
        "type": type_,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def problem_response(status: int, detail: str) -> Response:
    return Response(problem(status, detail), status=status, content_type=PROBLEM_CONTENT_TYPE)


def flatten_errors(detail, prefix: str = "") -> list[dict]:
    """Turn DRF's nested error structure into ``[{"field": "a.b", "detail": ...}]``."""
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            if isinstance(key, int):  # an item of a list field
                out += flatten_errors(value, f"{prefix}[{key}]")
                continue
            name = "" if key == "non_field_errors" else str(key)
            out += flatten_errors(value, f"{prefix}.{name}" if prefix and name else prefix or name)
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return [{"field": prefix or None, "detail": str(item)} for item in detail]
        out = []
        for index, item in enumerate(detail):
            out += flatten_errors(item, f"{prefix}[{index}]")
        return out
    return [{"field": prefix or None, "detail": str(detail)}]


# How long a client should wait before retrying while the database is away.
UNAVAILABLE_RETRY_AFTER_SECONDS = 5


def problem_exception_handler(exc, context):
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is away or refused the work (a lost connection, a lock
        # timeout): the client's request was fine, and may be sent again later.
        log.warning("api.database_unavailable", error=type(exc).__name__)
        response = Response(
            problem(503, "The database is unavailable; try again later."),
            status=503,
            content_type=PROBLEM_CONTENT_TYPE,
        )
        response["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_SECONDS)
        return response
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, exceptions.ValidationError):
        errors = flatten_errors(exc.detail)
        fields = sorted({e["field"] for e in errors if e["field"]})
        detail = "Invalid fields: " + ", ".join(fields) if fields else "Invalid request body."
        response = Response(
            problem(422, detail, errors=errors, type_=VALIDATION_TYPE),
            status=422,
            content_type=PROBLEM_CONTENT_TYPE,
        )
        return response

    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    response.data = problem(response.status_code, str(detail))
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def _json_problem(status: int, detail: str) -> JsonResponse:
    return JsonResponse(problem(status, detail), status=status, content_type=PROBLEM_CONTENT_TYPE)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def not_found_handler(request, exception=None):
    """No URL matched: problem JSON under /api/, Django's page elsewhere."""
    if _is_api(request):
        return _json_problem(404, "Not found.")
    return defaults.page_not_found(request, exception)


def bad_request_handler(request, exception=None):
    """A request Django refused before any view (unknown Host, too many fields)."""
    if _is_api(request):
        return _json_problem(400, "Bad request.")
    return defaults.bad_request(request, exception)


def server_error_handler(request):
    if _is_api(request):
        # The traceback is in the log; the client only learns that it was our fault.
        return _json_problem(500, "Internal error; it has been logged.")
    return defaults.server_error(request)
