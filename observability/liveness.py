"""The console's own processes, each proving it is alive with a beat in the cache.

The Celery worker beats whenever it runs the tiny ``record_worker_alive`` task
that beat schedules every second, beat itself beats on every scheduler tick
(``omoi_console.top.beat``), and the embedded mode's ticker on every turn of its
loop. A beat is one cache write (Redis in production, shared by every
process; local memory in the embedded mode, where the ticker lives in the web
process). ``/healthz``, the console page and the self metrics read the ages.

Which processes must beat: the worker and beat when Celery runs for real (not
eagerly); in the embedded mode, the ticker once one has started in this process
(and until it is stopped on purpose).
"""

import threading

import structlog
from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

WORKER = "worker"
BEAT = "beat"
TICKER = "ticker"

log = structlog.get_logger(__name__)

_started_here: set[str] = set()
_lock = threading.Lock()


def _key(process: str) -> str:
    return f"{settings.CHANNELS_PREFIX}:liveness:{process}"


def record_alive(process: str) -> None:
    """Note that ``process`` is alive now (kept a day: a dead process must show as stale)."""
    try:
        cache.set(_key(process), timezone.now().timestamp(), timeout=86400)
    except Exception:
        # The cache is down: /healthz says so itself; the process carries on.
        log.warning("liveness.record_failed", process=process, exc_info=True)


def started(process: str) -> None:
    """An in-process loop (the ticker) began: from now on it must beat."""
    with _lock:
        _started_here.add(process)
    record_alive(process)


def stopped(process: str) -> None:
    """The loop ended on purpose: it is no longer expected to beat."""
    with _lock:
        _started_here.discard(process)
    cache.delete(_key(process))


def expected_processes() -> list[str]:
    if not settings.LIVENESS_STALE_SECONDS:
        return []
    # Eager Celery runs tasks in the calling process: no worker or beat to wait for.
    processes = [] if current_app.conf.task_always_eager else [WORKER, BEAT]
    with _lock:
        return processes + sorted(_started_here - set(processes))


def ages() -> dict[str, float | None]:
    """Seconds since each expected process last beat; None when it never did."""
    processes = expected_processes()
    if not processes:
        return {}
    beats = cache.get_many([_key(process) for process in processes])
    now = timezone.now().timestamp()
    return {
        process: (
            max(0.0, now - beats[_key(process)]) if beats.get(_key(process)) is not None else None
        )
        for process in processes
    }


def describe(age: float | None) -> str:
    """ "ok", "stale 14s" or "missing", as /healthz and the console show it."""
    if age is None:
        return "missing"
    if age > settings.LIVENESS_STALE_SECONDS:
        return f"stale {age:.0f}s"
    return "ok"


def report() -> dict[str, str]:
    """Each expected process and how it is: {"worker": "ok", "beat": "stale 14s"}."""
    return {process: describe(age) for process, age in ages().items()}
