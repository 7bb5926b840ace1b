from celery import shared_task

from omoi_console.foundation.retention import service


# A run that waited a whole period is superseded by the next one.
@shared_task(ignore_result=True, expires=60)
def prune_expired() -> None:
    service.prune()
