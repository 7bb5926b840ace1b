from celery import shared_task

from watchdog import services


@shared_task(ignore_result=True, expires=2)
def check_remediations() -> None:
    services.expire_unverified()
