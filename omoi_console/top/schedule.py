"""The periodic jobs, owned here: Celery beat rows and the embedded ticker both come from this."""

from dataclasses import dataclass


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    task: str
    every_seconds: float
    # False: only Celery beat schedules it (the embedded ticker beats for itself).
    embedded: bool = True


PERIODIC_JOBS = (
    # The worker's liveness: beat sends it, a worker that runs it is alive.
    PeriodicJob("record worker liveness", "observability.tasks.record_worker_alive", 1.0, False),
    PeriodicJob("check heartbeats", "monitoring.tasks.check_heartbeats", 1.0),
    PeriodicJob("check stuck agents", "monitoring.tasks.check_stuck", 2.0),
    PeriodicJob("check remediations", "watchdog.tasks.check_remediations", 2.0),
    # Claims due rules (each has its own evaluate_every) with SKIP LOCKED.
    PeriodicJob("evaluate alert rules", "alerting.tasks.evaluate_rules", 5.0),
    PeriodicJob("deliver notifications", "alerting.tasks.deliver_due_notifications", 5.0),
    # Anomalous after three evaluations in a row: 30 to 45 s of a bad score.
    PeriodicJob("evaluate agent health", "monitoring.tasks.evaluate_agent_health", 15.0),
    # Keeps forwarded alerts alive in Alertmanager (alerting.transports.alertmanager).
    PeriodicJob("resend to alertmanager", "alerting.tasks.resend_to_alertmanager", 60.0),
    PeriodicJob("roll up metrics", "monitoring.tasks.roll_up_metrics", 15.0),
    # Closed minutes only: it follows the rollups, a minute behind at most.
    PeriodicJob("detect anomalies", "monitoring.tasks.detect_anomalies", 15.0),
    PeriodicJob("create metric partitions", "monitoring.tasks.create_metric_partitions", 600.0),
    # Pings only when a ping is due (OMOI_DEADMAN_INTERVAL_SECONDS) and the console is well.
    PeriodicJob("ping the dead man's switch", "omoi_console.top.tasks.ping_deadman", 5.0),
    # The console's own health into monitoring (event-bus lag, liveness ...): a few samples.
    PeriodicJob("record the console's metrics", "omoi_console.top.tasks.record_self_metrics", 15.0),
    PeriodicJob("sweep events", "omoi_console.foundation.events.tasks.sweep_events", 5.0),
    # Each run is bounded (rows per batch, batches per kind, seconds): see retention.
    PeriodicJob(
        "prune expired records", "omoi_console.foundation.retention.tasks.prune_expired", 60.0
    ),
)


def sync_beat_schedule() -> None:
    """Create or update one django-celery-beat row per job, by name; drop stale ones."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    names = []
    for job in PERIODIC_JOBS:
        # Beat's interval resolution is whole seconds.
        every = max(1, round(job.every_seconds))
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=every, period=IntervalSchedule.SECONDS
        )
        PeriodicTask.objects.update_or_create(
            name=f"omoi: {job.name}",
            defaults={
                "task": job.task,
                "interval": interval,
                "enabled": True,
                # A tick that waited longer than its period is superseded by the next.
                "expire_seconds": every,
            },
        )
        names.append(f"omoi: {job.name}")
    PeriodicTask.objects.filter(name__startswith="omoi: ").exclude(name__in=names).delete()
