from celery import shared_task

from omoi_console.top.deadman import ping_deadman_switch
from omoi_console.top.self_watch import record_console_metrics


@shared_task(ignore_result=True, expires=5)
def ping_deadman() -> None:
    ping_deadman_switch()


@shared_task(ignore_result=True, expires=15)
def record_self_metrics() -> None:
    record_console_metrics()
