from celery import shared_task

from omoi_console.top.deadman import ping_deadman_switch


@shared_task(ignore_result=True, expires=5)
def ping_deadman() -> None:
    ping_deadman_switch()
