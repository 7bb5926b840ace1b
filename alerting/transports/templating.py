"""Webhook bodies from operator-written templates, rendered in Jinja2's sandbox.

The sandbox keeps templates from reaching Python internals; the limits below
keep one from building huge strings, and the output must be a JSON document.
"""

import json
import operator

from django.core.exceptions import ValidationError
from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment, SecurityError

MAX_TEMPLATE_CHARS = 20_000
MAX_BODY_BYTES = 64 * 1024
MAX_REPEAT = 10_000


class BodyTemplateError(Exception):
    pass


class BoundedEnvironment(SandboxedEnvironment):
    """``'x' * 10**9`` and ``10 ** 10**9`` stop at a small bound instead of eating memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator_name, left, right):
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large")
            return operator.pow(left, right)
        if operator_name == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, str | list | tuple) and isinstance(b, int) and b > MAX_REPEAT:
                    raise SecurityError("repetition too large")
            return operator.mul(left, right)
        return super().call_binop(context, operator_name, left, right)


ENVIRONMENT = BoundedEnvironment(autoescape=False)


def render_body(source: str, payload: dict) -> bytes:
    """The template rendered over the Alertmanager-style payload, as JSON bytes."""
    try:
        text = ENVIRONMENT.from_string(source).render(payload=payload, **payload)
    except (TemplateError, SecurityError, TypeError, ValueError, ArithmeticError) as exc:
        raise BodyTemplateError(f"template failed: {type(exc).__name__}: {exc}"[:300]) from None
    body = text.encode()
    if len(body) > MAX_BODY_BYTES:
        raise BodyTemplateError(f"rendered body over {MAX_BODY_BYTES} bytes")
    try:
        json.loads(body)
    except ValueError as exc:
        raise BodyTemplateError(f"rendered body is not JSON: {exc}"[:300]) from None
    return body


def validate_template(source, sample_payload: dict, key: str = "template") -> str | None:
    if source in (None, ""):
        return None
    if not isinstance(source, str):
        raise ValidationError({key: "a Jinja2 template string"})
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ValidationError({key: f"at most {MAX_TEMPLATE_CHARS} characters"})
    try:
        ENVIRONMENT.parse(source)
    except TemplateSyntaxError as exc:
        raise ValidationError({key: f"line {exc.lineno}: {exc.message}"}) from None
    try:
        render_body(source, sample_payload)
    except BodyTemplateError as exc:
        raise ValidationError({key: f"with a sample alert: {exc}"}) from None
    return source
