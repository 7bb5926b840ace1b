import re

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination

from omoi_console.foundation.api.fields import BIGINT_MAX


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """``?limit=`` and ``?offset=``, refused with 422 when they are not whole numbers in range.

    DRF's own pagination ignores a malformed value and passes any size through
    to the database, where a huge one is an error rather than an answer.
    """

    default_limit = 50
    max_limit = 500

    def get_limit(self, request):
        return whole_number(request, self.limit_query_param, 1, self.max_limit, self.default_limit)

    def get_offset(self, request):
        return whole_number(request, self.offset_query_param, 0, BIGINT_MAX, 0)

    def get_schema_operation_parameters(self, view):
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit},
            self.offset_query_param: {"minimum": 0, "maximum": BIGINT_MAX},
        }
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters


def whole_number(request, name: str, low: int, high: int, default: int) -> int:
    """The query parameter ``name`` as an integer in [low, high]; absent or empty: default."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not re.fullmatch(r"[0-9]+", raw) or not low <= int(raw) <= high:
        raise ValidationError({name: f"Must be a whole number from {low} to {high}."})
    return int(raw)
