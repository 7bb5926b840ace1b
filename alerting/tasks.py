import time

import structlog
from celery import shared_task

from alerting import delivery, evaluator
from observability import self_metrics

log = structlog.get_logger(__name__)


@shared_task(ignore_result=True)
def deliver_notification(notification_id: int) -> None:
    delivery.deliver_notification(notification_id)


@shared_task(ignore_result=True)
def deliver_notifications(notification_ids: list[int]) -> None:
    """Notifications created together (outside groups), one attempt each, in order."""
    for notification_id in notification_ids:
        try:
            delivery.deliver_notification(notification_id)
        except Exception:  # the rest still go; the periodic sweep retries this one
            log.exception("notification.delivery_crashed", notification_id=notification_id)


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
