from celery import shared_task

from watchdog import services


@shared_task(ignore_result=True, expires=2)
def check_remediations() -> None:
    """Advance every remediation whose next step is due (claimed with SKIP LOCKED)."""
    services.advance_due()
