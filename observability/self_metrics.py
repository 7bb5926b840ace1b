"""Readings of the console's own work, noted where it happens and collected periodically.

The places that know (the rule evaluation task, notification delivery) note a
reading with one cache write; the periodic job of ``omoi_console.top.self_watch``
reads them all at once and stores them as metrics in monitoring. A reading that
cannot be written (the cache is down) is dropped: noting must never fail the
work it describes.
"""

import structlog
from django.conf import settings
from django.core.cache import cache

log = structlog.get_logger(__name__)

RULE_EVALUATION_SECONDS = "rule_evaluation_seconds"
NOTIFICATION_FAILURES = "notification_failures"
READINGS = (RULE_EVALUATION_SECONDS, NOTIFICATION_FAILURES)
# A reading older than this is of a process that stopped; /healthz says that.
KEEP_SECONDS = 3600
# A running total: only a cache restart resets it, which a counter's readers allow for.
COUNTER_KEEP_SECONDS = 30 * 86400


def _key(name: str) -> str:
    return f"{settings.CHANNELS_PREFIX}:self:{name}"


def note_rule_evaluation(seconds: float) -> None:
    """How long the latest run of rule evaluation took."""
    try:
        cache.set(_key(RULE_EVALUATION_SECONDS), seconds, timeout=KEEP_SECONDS)
    except Exception:
        log.warning("self_metrics.note_failed", reading=RULE_EVALUATION_SECONDS, exc_info=True)


def count_notification_failure() -> None:
    """One more failed delivery attempt (retried or given up on)."""
    key = _key(NOTIFICATION_FAILURES)
    try:
        # add() starts the count; incr() is atomic in Redis, so workers never lose one.
        if not cache.add(key, 1, timeout=COUNTER_KEEP_SECONDS):
            cache.incr(key)
    except Exception:
        log.warning("self_metrics.note_failed", reading=NOTIFICATION_FAILURES, exc_info=True)


def readings() -> dict[str, float]:
    """The latest reading of each kind that has one."""
    found = cache.get_many([_key(name) for name in READINGS])
    return {name: float(found[_key(name)]) for name in READINGS if _key(name) in found}
