import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from omoi_console.api.problems import RequestTooLarge


class BoundedJSONParser(JSONParser):
    """Strict JSON: UTF-8 only, no NaN/Infinity, at most MAX_REQUEST_BYTES.

    Django already refuses an oversized ``request.body`` (mapped to 413 by the
    problem handler); the bound here covers any stream DRF hands over unread.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_REQUEST_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"Request body exceeds {limit} bytes.")
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise RequestTooLarge(f"Request body exceeds {limit} bytes.")
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")
