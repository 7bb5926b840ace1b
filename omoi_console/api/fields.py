"""Serializer fields that take the JSON type they declare and nothing else.

DRF's fields coerce: ``"0.5"`` and ``true`` pass as numbers, ``123`` as text.
An agent that sends the wrong type has a bug its operator wants to hear about,
so these refuse with 422 instead of guessing.
"""

import re

from rest_framework import serializers

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


LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")


class LabelsField(serializers.DictField):
    """``{"name": "value"}`` with Prometheus-like names and bounded size."""

    MAX_LABELS = 32

    def __init__(self, **kwargs):
        super().__init__(child=StrictCharField(max_length=200, allow_blank=True), **kwargs)

    def to_internal_value(self, data):
        labels = super().to_internal_value(data)
        if len(labels) > self.MAX_LABELS:
            raise serializers.ValidationError(f"At most {self.MAX_LABELS} labels.")
        bad = sorted(name for name in labels if not LABEL_NAME.fullmatch(name))
        if bad:
            raise serializers.ValidationError(
                {
                    name[:64]: "Label names are 1-63 letters, digits, '_', '.' or '-', "
                    "starting with a letter or '_'."
                    for name in bad
                }
            )
        return labels
