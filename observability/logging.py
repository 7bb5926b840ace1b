"""structlog behind the stdlib logging tree, configured only through LOGGING.

Importing the ASGI module runs ``django.setup()`` again and re-applies LOGGING,
so everything lives in the formatter factory and is safe to apply twice.
"""

import logging

import structlog
from opentelemetry import trace

SECRET_KEYS = ("token", "password", "secret", "authorization", "api_key", "hmac")
REDACTED = "[redacted]"


def add_trace_ids(logger, method_name, event_dict):
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def redact_secrets(logger, method_name, event_dict):
    """Never let a credential reach a log line, whatever a caller passes."""
    for key in list(event_dict):
        if any(marker in key.lower() for marker in SECRET_KEYS):
            event_dict[key] = REDACTED
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
    final = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if renderer == "json"
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )


class DropCountedResponses(logging.Filter):
    """Filter for ``django.request``: drops its line per 401 and 429 answer.

    The rate limits and the login throttle count those answers and log one line
    per window with the count; a line per request would let a flood of bad
    tokens flood the log as well.
    """

    def filter(self, record) -> bool:
        return getattr(record, "status_code", None) not in (401, 429)
