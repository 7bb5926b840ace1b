import time

from celery import shared_task

from alerting import delivery, evaluator
from observability import self_metrics


@shared_task(ignore_result=True)
def deliver_notification(notification_id: int) -> None:
    delivery.deliver_notification(notification_id)


@shared_task(ignore_result=True, expires=5)
def deliver_due_notifications() -> None:
    delivery.deliver_due_notifications()


@shared_task(ignore_result=True, expires=5)
def evaluate_rules() -> None:
    started = time.monotonic()
    evaluator.evaluate_due()
    self_metrics.note_rule_evaluation(time.monotonic() - started)


@shared_task(ignore_result=True, expires=30)
def resend_to_alertmanager() -> None:
    from alerting.transports.alertmanager import resend_active_alerts

    resend_active_alerts()
