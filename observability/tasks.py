from celery import shared_task

from observability import liveness


@shared_task(ignore_result=True, expires=1)
def record_worker_alive() -> None:
    """Beat sends it every second; a worker that runs it is alive and taking work."""
    liveness.record_alive(liveness.WORKER)
