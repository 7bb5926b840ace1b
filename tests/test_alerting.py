import threading

import pytest
from aiosmtpd.controller import Controller
from django.core import mail
from django.db import connections, transaction
from django.test import override_settings

from alerting import delivery, lifecycle
from alerting.models import Alert, AlertRule, AlertStatus, Notification, NotificationStatus
from monitoring.services import check_heartbeats, record_heartbeat
from tests.conftest import bearer, free_port

LOST = {"agent_id": "worker-01", "role": "worker", "last_heartbeat_at": None, "missed": 3}


class Inbox:
    def __init__(self):
        self.messages = []
        self.received = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        self.received.set()
        return "250 OK"


@pytest.fixture(autouse=True)
def alert_mail(settings):
    """Mail recipients, which production mode leaves empty until an operator sets them."""
    settings.ALERT_EMAIL_RECIPIENTS = ["oncall@example.org"]


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, controller.port
    controller.stop()


@pytest.mark.django_db(transaction=True)
def test_it_fires_one_alert_and_notifies_console_and_email(registered_agent):
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"):
        lifecycle.fire_heartbeat_alerts(LOST)
        again = lifecycle.fire_heartbeat_alerts(LOST)

    alert = Alert.objects.get()
    assert again == [alert]  # same fingerprint, same alert
    assert alert.status == AlertStatus.FIRING
    assert alert.summary == "Agent worker-01 (worker) stopped sending heartbeats"
    sent = Notification.objects.filter(alert=alert, status=NotificationStatus.SENT)
    assert sorted(sent.values_list("channel", flat=True)) == ["console", "email"]
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject.startswith("[FIRING] agent-heartbeat")


@pytest.mark.django_db(transaction=True)
def test_it_delivers_email_over_real_smtp(smtp_server, registered_agent):
    inbox, port = smtp_server
    smtp = {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": port,
        "ALERT_EMAIL_RECIPIENTS": ["oncall@example.org", "lead@example.org"],
    }
    with override_settings(**smtp):
        lifecycle.fire_heartbeat_alerts(LOST)

    assert inbox.received.wait(5)
    envelope = inbox.messages[0]
    assert sorted(envelope.rcpt_tos) == ["lead@example.org", "oncall@example.org"]
    assert b"worker-01" in envelope.content
    email = Notification.objects.get(channel="email")
    assert email.status == NotificationStatus.SENT
    assert email.latency_ms is not None


@pytest.mark.django_db(transaction=True)
def test_it_retries_email_when_smtp_is_down_and_keeps_the_error(registered_agent):
    closed_port = free_port()
    with override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=closed_port,
        EMAIL_HOST_PASSWORD="hunter2-smtp-secret",
    ):
        lifecycle.fire_heartbeat_alerts(LOST)

    email = Notification.objects.get(channel="email")
    assert email.status == NotificationStatus.PENDING
    assert email.attempts == 1
    assert email.last_error.startswith("smtp:")
    assert "hunter2" not in email.last_error
    assert email.next_attempt_at > email.created_at


@pytest.mark.django_db(transaction=True)
def test_it_resolves_the_alert_when_the_agent_recovers(registered_agent):
    import time_machine
    from django.utils import timezone

    agent, _ = registered_agent
    # Without the watchdog's restart, a resumed heartbeat is the recovery.
    with (
        override_settings(WATCHDOG_MODE="off"),
        time_machine.travel(timezone.now(), tick=False) as clock,
    ):
        record_heartbeat(agent, state="running")
        clock.shift(18)
        check_heartbeats()
        alert = Alert.objects.get()
        assert alert.status == AlertStatus.FIRING
        clock.shift(1)
        record_heartbeat(agent, state="running")

    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    kinds = sorted(Notification.objects.values_list("kind", "channel"))
    assert ("resolved", "console") in kinds


@pytest.mark.django_db
def test_it_lets_operators_but_not_viewers_acknowledge(api, make_operator, registered_agent):
    lifecycle.fire_heartbeat_alerts(LOST)
    alert = Alert.objects.get()
    _, viewer_token = make_operator("viewer")
    operator, operator_token = make_operator("operator")
    url = f"/api/v1/alerts/{alert.pk}/acknowledge"

    assert api.get("/api/v1/alerts?status=open", **bearer(viewer_token)).json()["count"] == 1
    assert api.post(url, **bearer(viewer_token)).status_code == 403
    assert api.post(url).status_code == 401

    response = api.post(url, **bearer(operator_token))
    assert response.status_code == 200
    assert response.json()["acknowledged_by"] == operator.username
    alert.refresh_from_db()
    assert alert.status == AlertStatus.ACKNOWLEDGED
    listing = "/api/v1/alerts?status={}"
    assert api.get(listing.format("open"), **bearer(viewer_token)).json()["count"] == 1
    assert api.get(listing.format("firing"), **bearer(viewer_token)).json()["count"] == 0
    assert api.get(listing.format("bogus"), **bearer(viewer_token)).status_code == 422


@pytest.mark.django_db
def test_it_refuses_to_acknowledge_a_resolved_alert(api, make_operator, registered_agent):
    lifecycle.fire_heartbeat_alerts(LOST)
    lifecycle.resolve_heartbeat_alerts(LOST)
    _, token = make_operator("operator")
    alert = Alert.objects.get()

    response = api.post(f"/api/v1/alerts/{alert.pk}/acknowledge", **bearer(token))
    assert response.status_code == 409
    assert api.post("/api/v1/alerts/999999/acknowledge", **bearer(token)).status_code == 404


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_claims_one_alerts_notifications_independently(registered_agent, monkeypatch):
    monkeypatch.setattr(delivery, "enqueue_delivery", lambda notification_id: None)
    lifecycle.fire_heartbeat_alerts(LOST)
    console, email = Notification.objects.order_by("channel")
    held, release = threading.Event(), threading.Event()

    def hold_console_claim():
        try:
            with transaction.atomic():
                assert delivery.claim_notification(console.pk) is not None
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    worker = threading.Thread(target=hold_console_claim)
    worker.start()
    try:
        assert held.wait(10)
        # The console delivery holds its row; the email beside it is still free.
        assert delivery.claim_notification(email.pk) is not None
        assert delivery.claim_notification(console.pk) is None
    finally:
        release.set()
        worker.join(10)


def test_it_fills_only_plain_label_placeholders_in_summaries():
    rule = AlertRule(
        summary="{agent_id} down ({role}); {missing} {agent_id.upper} {role:>999999999}"
    )

    summary = lifecycle.render_summary(rule, {"agent_id": "w-1", "role": "worker"})

    assert summary == "w-1 down (worker); {missing} {agent_id.upper} {role:>999999999}"


@pytest.mark.django_db
def test_a_mass_outage_fires_its_alerts_together_each_in_its_own_incidents_trace(
    django_capture_on_commit_callbacks,
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from alerting.handlers import on_heartbeat_lost
    from omoi_console.foundation.events import publish
    from omoi_console.foundation.events.tracing import new_trace
    from omoi_console.models import Event

    def outage(prefix: str, size: int) -> tuple[list, int]:
        events = []
        for n in range(size):
            with new_trace("monitoring.heartbeat_overdue"):  # one incident, one trace
                lost = {**LOST, "agent_id": f"{prefix}-{n}"}
                events.append(publish("monitor.agent.heartbeat_lost", lost))
        with django_capture_on_commit_callbacks(), CaptureQueriesContext(connection) as seen:
            on_heartbeat_lost(events)
        return events, len(seen.captured_queries)

    few, few_statements = outage("s", 2)
    many, many_statements = outage("l", 12)

    assert many_statements - few_statements <= 4, (few_statements, many_statements)
    for event in [*few, *many]:
        alert = Alert.objects.get(labels__agent_id=event.payload["agent_id"])
        assert alert.status == AlertStatus.FIRING
        assert len({event.trace_id, alert.trace_id}) == 1 and event.trace_id
        triggered = Event.objects.get(name="monitor.alert.triggered", payload__alert_id=alert.pk)
        assert triggered.trace_id == event.trace_id
        notified = Notification.objects.filter(alert=alert)
        assert notified.exists()
        assert set(notified.values_list("trace_id", flat=True)) == {event.trace_id}

    # Told again (a redelivered batch): the open alerts are those alerts.
    with django_capture_on_commit_callbacks():
        on_heartbeat_lost(many)
    assert Alert.objects.count() == 14
