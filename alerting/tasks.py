from celery import shared_task

from alerting import services


@shared_task(ignore_result=True)
def deliver_notification(notification_id: int) -> None:
    services.deliver_notification(notification_id)


@shared_task(ignore_result=True, expires=5)
def deliver_due_notifications() -> None:
    services.deliver_due_notifications()
