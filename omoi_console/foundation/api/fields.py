"""Serializer fields that take the JSON type they declare and nothing else.

DRF's fields coerce: ``"0.5"`` and ``true`` pass as numbers, ``123`` as text.
An agent that sends the wrong type has a bug its operator wants to hear about,
so these refuse with 422 instead of guessing.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from omoi_console.foundation.labels import validate_labels

# Signed 64-bit: the widest integer every supported database column holds.
BIGINT_MAX = 2**63 - 1


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def __init__(self, **kwargs):
        kwargs.setdefault("max_value", BIGINT_MAX)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class LabelsField(serializers.DictField):
    """``{"name": "value"}`` under the same rule as every other way labels come in."""

    def __init__(self, **kwargs):
        super().__init__(child=StrictCharField(max_length=200, allow_blank=True), **kwargs)

    def to_internal_value(self, data):
        labels = super().to_internal_value(data)
        try:
            validate_labels(labels)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return labels
