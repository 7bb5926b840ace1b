from celery import shared_task

from watchdog import chains, services


@shared_task(ignore_result=True, expires=2)
def check_remediations() -> None:
    """Advance every remediation whose next step (or escalation level) is due.

    Both are claimed with SKIP LOCKED."""
    services.advance_due()
    chains.advance_escalations()
