from celery import shared_task

from monitoring import services, stuck


@shared_task(ignore_result=True, expires=1)
def check_heartbeats() -> None:
    services.check_heartbeats()


@shared_task(ignore_result=True, expires=1)
def check_stuck() -> None:
    stuck.check_stuck()
