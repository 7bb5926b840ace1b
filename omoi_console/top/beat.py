"""Celery beat's scheduler, beating for its own liveness on every tick."""

from django_celery_beat.schedulers import DatabaseScheduler

from observability import liveness


class LivenessScheduler(DatabaseScheduler):
    """django-celery-beat's scheduler that records beat's liveness as it ticks.

    Beat ticks at least once a second while a job runs every second, so a beat
    process that stops or hangs shows as stale within the liveness bound.
    """

    def tick(self, *args, **kwargs):
        liveness.record_alive(liveness.BEAT)
        return super().tick(*args, **kwargs)
