from celery import shared_task

from monitoring import services


@shared_task(ignore_result=True, expires=1)
def check_heartbeats() -> None:
    services.check_heartbeats()
