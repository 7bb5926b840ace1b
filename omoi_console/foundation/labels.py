"""Label sets (``{"name": "value"}``): one rule for every way in, API or admin."""

import re

from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible

LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
LABEL_NAME_RULE = "1-63 letters, digits, '_', '.' or '-', starting with a letter or '_'"


def unstorable(text: str) -> str | None:
    """What in ``text`` no database or renderer takes (NUL, a lone surrogate), else None."""
    if "\x00" in text:
        return "NUL (\\u0000)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "a lone surrogate"
    return None


def storable(text: str) -> bool:
    return unstorable(text) is None


@deconstructible
class TextMapValidator:
    """A JSON object of at most ``max_items`` names, each mapped to a short text."""

    def __init__(self, max_items: int = 32, max_value_length: int = 200):
        self.max_items = max_items
        self.max_value_length = max_value_length

    def __call__(self, value):
        if not isinstance(value, dict):
            raise ValidationError("Must be an object of names to texts.")
        problems = []
        if len(value) > self.max_items:
            problems.append(f"At most {self.max_items} entries.")
        for name, text in value.items():
            shown = repr(name[:64]) if storable(name) else "a name"
            if not storable(name) or not LABEL_NAME.fullmatch(name):
                problems.append(f"{shown}: names are {LABEL_NAME_RULE}.")
            elif not isinstance(text, str):
                problems.append(f"{shown}: the value must be text.")
            elif len(text) > self.max_value_length or not storable(text):
                problems.append(
                    f"{shown}: the value must be at most {self.max_value_length} characters "
                    "of storable text (no NUL)."
                )
        if problems:
            raise ValidationError(problems)

    def __eq__(self, other):
        return (
            isinstance(other, TextMapValidator)
            and self.max_items == other.max_items
            and self.max_value_length == other.max_value_length
        )


validate_labels = TextMapValidator()
validate_annotations = TextMapValidator(max_items=16, max_value_length=2000)
