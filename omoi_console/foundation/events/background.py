"""Dispatch off the committing thread, for loops that must keep their pace.

With eager Celery (embedded mode) a dispatch runs inline in whichever thread
committed the events. For a request that is the point (the gameday reads the
whole chain right after it). For the heartbeat check and the lean path's batch
writer it is not: a thousand failures would keep the check from ticking, and
the writer from answering heartbeats, for as long as their handlers take.
Inside ``dispatch_in_background()`` an eager hand-off goes to one background
thread instead, in order; a real broker hand-off is already asynchronous and
is left alone.
"""

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import structlog
from django.db import close_old_connections, connections

log = structlog.get_logger(__name__)

_local = threading.local()
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


@contextlib.contextmanager
def dispatch_in_background():
    previous = getattr(_local, "background", False)
    _local.background = True
    try:
        yield
    finally:
        _local.background = previous


def wanted() -> bool:
    return getattr(_local, "background", False)


def submit(func, *args) -> None:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="omoi-dispatch")
        _executor.submit(_run, func, *args)


def _run(func, *args) -> None:
    close_old_connections()
    try:
        func(*args)
    except Exception:
        # The events stay pending: the sweeper hands them over again.
        log.exception("event.background_dispatch_failed")


def drain(timeout: float = 30.0) -> None:
    """Wait for what was handed off so far, then let the thread's connections go.

    For an orderly stop: nothing handed off is cut short, and no idle connection
    of the background thread outlives its user (a database being dropped waits
    for every session on it).
    """
    with _executor_lock:
        executor = _executor
    if executor is not None:
        executor.submit(connections.close_all).result(timeout)
