"""The embedded mode's stand-in for Celery beat: one thread running PERIODIC_JOBS."""

import threading
import time

import structlog
from django.db import close_old_connections, connection
from django.utils.module_loading import import_string

from observability import liveness
from omoi_console.foundation.events.background import dispatch_in_background
from omoi_console.top.schedule import PERIODIC_JOBS

log = structlog.get_logger(__name__)

LIVENESS_EVERY_SECONDS = 1.0


class Ticker:
    """Runs each periodic job's task body in-process at its period.

    ``periods`` overrides a job's period by task path (gameday shortens the
    heartbeat check together with the heartbeat interval).
    """

    def __init__(self, periods: dict[str, float] | None = None, resolution: float = 0.05):
        overrides = periods or {}
        self.jobs = [
            (import_string(job.task), overrides.get(job.task, job.every_seconds))
            for job in PERIODIC_JOBS
            if job.embedded
        ]
        self.resolution = resolution
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omoi-ticker", daemon=True)

    def start(self) -> None:
        liveness.started(liveness.TICKER)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            liveness.stopped(liveness.TICKER)

    def _run(self) -> None:
        due = [time.monotonic()] * len(self.jobs)
        beat_due = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= beat_due:
                    # A job that hangs stops these beats: /healthz then names the ticker.
                    liveness.record_alive(liveness.TICKER)
                    beat_due = time.monotonic() + LIVENESS_EVERY_SECONDS
                for index, (task, period) in enumerate(self.jobs):
                    if time.monotonic() >= due[index]:
                        self._run_once(task)
                        due[index] = time.monotonic() + period
                self._stop.wait(
                    max(0.0, min([*due, beat_due]) - time.monotonic()) or self.resolution
                )
        finally:
            connection.close()

    @staticmethod
    def _run_once(task) -> None:
        close_old_connections()
        try:
            # The checks keep their pace; what they publish is handled beside them.
            with dispatch_in_background():
                task()
        except Exception:
            # One bad tick must not stop the checks that keep the fleet alive.
            log.exception("ticker.job_failed", task=task.name)
