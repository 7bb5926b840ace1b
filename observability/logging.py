"""structlog behind the stdlib logging tree, configured only through LOGGING.

Importing the ASGI module runs ``django.setup()`` again and re-applies LOGGING,
so everything lives in the formatter factory and is safe to apply twice.

Every line carries the fields of docs/observability.md ("Logs"): the standard
ones (timestamp, level, event, logger), the trace's ids when a span is current,
and whatever the code bound for the request, task or incident (request_id,
agent_id, alert_id ...). Secrets are masked twice: whole values under a secret's
key, and secrets written inside any text (a message, a URL, an exception).
"""

import logging
import re

import structlog
from opentelemetry import trace

SECRET_KEYS = ("token", "password", "secret", "authorization", "api_key", "hmac")
REDACTED = "[redacted]"

# Secrets inside text, each with the part to keep before it. Order matters: the
# URL patterns run before the generic key=value one.
SECRET_PATTERNS = (
    # Credentials in a URL: scheme://user:password@host, scheme://:password@host
    (re.compile(r"(?P<keep>\b[a-z][a-z0-9+.-]*://)[^\s/@:\"']*(?::[^\s/@\"']*)?@", re.I), "@"),
    # A token in a query string: ?token=..., &access_token=..., &sig=...
    (
        re.compile(
            r"(?P<keep>[?&;](?:[a-z0-9_-]*(?:token|secret|password|passwd|key|sig|signature"
            r"|auth|code))=)[^&#\s\"']+",
            re.I,
        ),
        "",
    ),
    # Incoming-webhook URLs whose path is the secret (Slack and the like).
    (re.compile(r"(?P<keep>hooks\.slack\.com/)[^\s\"'<>]+", re.I), ""),
    # Authorization schemes: "Bearer abc", "Token abc", "Basic abc".
    (re.compile(r"(?P<keep>\b(?:bearer|token|basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), ""),
    # The console's own tokens wherever they appear: omoi_<kind>_<lookup>_<secret>.
    (re.compile(r"(?P<keep>\bomoi_[a-z]+_[A-Za-z0-9]+_)[A-Za-z0-9_-]+"), ""),
    # key=value or key: value for a secret-sounding key (password=..., "hmac_key": "...").
    (
        re.compile(
            r"(?P<keep>\b[a-z0-9_-]*(?:password|passwd|pwd|secret|token|api[_-]?key|hmac[_-]?key"
            r"|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+",
            re.I,
        ),
        "",
    ),
)


def add_trace_ids(logger, method_name, event_dict):
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def redact_secrets(logger, method_name, event_dict):
    """Never let a credential reach a log line, whatever a caller passes under a secret's name."""
    for key in list(event_dict):
        if any(marker in key.lower() for marker in SECRET_KEYS):
            event_dict[key] = REDACTED
    return event_dict


def redact_text(text: str) -> str:
    """``text`` with every secret the patterns recognise replaced by the redaction mark."""
    for pattern, after in SECRET_PATTERNS:
        text = pattern.sub(lambda match, after=after: match["keep"] + REDACTED + after, text)
    return text


def _redacted(value, depth: int = 0):
    if isinstance(value, str):
        return redact_text(value)
    if depth < 4 and isinstance(value, dict):
        return {key: _redacted(item, depth + 1) for key, item in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [_redacted(item, depth + 1) for item in value]
    return value


def redact_secret_values(logger, method_name, event_dict):
    """Mask secrets written inside values: messages, URLs, exception text.

    Runs last, after the exception is rendered, so a password in a driver's
    error message is masked as well.
    """
    for key, value in event_dict.items():
        event_dict[key] = _redacted(value)
    return event_dict


SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    add_trace_ids,
    redact_secrets,
]


def structured_formatter(renderer: str = "json") -> logging.Formatter:
    """Formatter factory for LOGGING; also (re)configures structlog itself."""
    structlog.configure(
        processors=[
            *SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    render = (
        structlog.processors.JSONRenderer()
        if renderer == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secret_values,
            render,
        ],
    )


class DropCountedResponses(logging.Filter):
    """Filter for ``django.request``: drops its line per 401 and 429 answer.

    The rate limits and the login throttle count those answers and log one line
    per window with the count; a line per request would let a flood of bad
    tokens flood the log as well.
    """

    def filter(self, record) -> bool:
        return getattr(record, "status_code", None) not in (401, 429)
