from celery import shared_task

from omoi_console.foundation.events import bus


@shared_task(ignore_result=True)
def dispatch_events(event_ids: list[str]) -> None:
    bus.dispatch_many(event_ids)


@shared_task(ignore_result=True)
def dispatch_event(event_id: str) -> None:
    bus.dispatch_many([event_id])


@shared_task(ignore_result=True, expires=10)
def sweep_events() -> None:
    bus.sweep()
