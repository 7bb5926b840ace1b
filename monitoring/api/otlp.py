"""``POST /v1/metrics``: OTLP/HTTP metrics export, in protobuf or the OTLP JSON mapping.

Answers follow the OTLP/HTTP specification rather than the rest of the API: a
success is an ``ExportMetricsServiceResponse`` and every error a
``google.rpc.Status``, both in the encoding of the request (JSON when it has
none we know). The status codes and ``Retry-After`` are the API's own.
"""

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from rest_framework.views import APIView

from monitoring import otlp
from monitoring.api.metrics import CanIngest, agent_of
from omoi_console.foundation.api.parsers import BatchBytesParser

# The gRPC code that goes with each HTTP status the endpoint answers.
RPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}
# Headers of an error answer that tell the client what to do next.
KEPT_HEADERS = ("Retry-After", "WWW-Authenticate", "Allow")


class OtlpProtobufParser(BatchBytesParser):
    media_type = otlp.PROTOBUF


class OtlpJsonParser(BatchBytesParser):
    media_type = otlp.JSON


def encoding_of(request) -> str:
    content_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    return otlp.PROTOBUF if content_type == otlp.PROTOBUF else otlp.JSON


def encoded(message, encoding: str, status: int = 200) -> HttpResponse:
    if encoding == otlp.PROTOBUF:
        return HttpResponse(message.SerializeToString(), status=status, content_type=encoding)
    body = json_format.MessageToJson(message, indent=None)
    return HttpResponse(body, status=status, content_type=encoding)


def status_response(http_status: int, message: str, encoding: str, problems=()) -> HttpResponse:
    status = status_pb2.Status(code=RPC_CODES.get(http_status, code_pb2.UNKNOWN), message=message)
    if problems:
        violations = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=where, description=reason)
                for where, reason in problems
            ]
        )
        status.details.add().Pack(violations)
    return encoded(status, encoding, http_status)


@extend_schema(exclude=True)  # a protobuf API, specified by OpenTelemetry, not by our schema
class OtlpMetricsView(APIView):
    """Store an OTLP metrics export: its gauge and sum points, all of them or none."""

    parser_classes = [OtlpProtobufParser, OtlpJsonParser]
    permission_classes = [CanIngest]
    for_agents = True

    def post(self, request):
        encoding = encoding_of(request)
        body = request.data if isinstance(request.data, bytes) else b""
        agent_id = agent_of(request)
        sender = f"agent:{agent_id}" if agent_id else f"user:{request.user.pk}"
        try:
            exported = otlp.export(
                otlp.decode(body, encoding),
                agent_id=agent_id,
                key=otlp.content_key(sender, body),
            )
        except otlp.ExportRefused as exc:
            return status_response(400, exc.message, encoding, exc.problems)
        return encoded(exported.response(), encoding)

    def handle_exception(self, exc):
        """The API's answer (401, 403, 413, 415, 503 ...) re-worded as a ``google.rpc.Status``."""
        response = super().handle_exception(exc)
        data = getattr(response, "data", None)
        detail = data.get("detail", "") if isinstance(data, dict) else ""
        answer = status_response(response.status_code, str(detail), encoding_of(self.request))
        for header in KEPT_HEADERS:
            if header in response:
                answer[header] = response[header]
        return answer
