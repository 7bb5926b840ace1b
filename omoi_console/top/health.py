"""Is the console itself healthy: what /healthz, the console page and the dead man's switch ask.

The database and, with Redis, the cache must answer; the console's own
processes (the Celery worker and beat, or the embedded ticker) must have beaten
lately (``observability.liveness``). Each check is a word: "ok", "unreachable",
"missing" or "stale 14s"; why a check failed goes to the log, never into the
answer, which anyone may read.
"""

import structlog
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from observability import liveness

log = structlog.get_logger(__name__)


def console_health() -> dict:
    """{"status": "ok" | "error", "database": "ok", "redis": ..., "worker": ..., "beat": ...}."""
    checks = {"database": _reachable(_ping_database)}
    if settings.REDIS_URL:
        checks["redis"] = _reachable(_ping_cache)
    if checks.get("redis", "ok") == "ok":
        # With the cache unreachable no beat can be read; "redis" already says why.
        checks.update(_process_report())
    healthy = all(state == "ok" for state in checks.values())
    return {"status": "ok" if healthy else "error", **checks}


def _process_report() -> dict[str, str]:
    try:
        return liveness.report()
    except Exception:
        log.warning("healthz.liveness_unreadable", exc_info=True)
        return {}


def _reachable(ping) -> str:
    try:
        ping()
    except Exception:
        # Why it failed belongs in the log, not in an unauthenticated response.
        log.warning("healthz.unreachable", check=ping.__name__, exc_info=True)
        return "unreachable"
    return "ok"


def _ping_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _ping_cache() -> None:
    # Redis carries the channel layer and the broker too; the cache is the cheap probe.
    cache.get("healthz")
