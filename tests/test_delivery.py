"""Delivery to receivers: HTTP channels against a local receiver, retries, the dead
letter, fallbacks, the circuit breaker and the private-address guard."""

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from aiosmtpd.controller import Controller
from django.core.exceptions import ValidationError
from django.utils import timezone

from alerting import delivery, lifecycle
from alerting.models import AlertRule, Notification, NotificationStatus, Receiver
from alerting.transports import REGISTRY, Transport, register
from alerting.transports.http import refused_reason, retry_after_seconds
from tests.conftest import captured_log, free_port
from tests.delivery_receivers import Answer, HttpReceiver
from tests.test_alerting import Inbox

SECRET = "whsec-0123456789abcdef-do-not-leak"
LABELS = {"agent_id": "worker-01", "role": "worker"}
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def allow_loopback(settings):
    """These tests post to 127.0.0.1; the guard's own test turns this off."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.NOTIFICATION_MAX_ATTEMPTS = 3
    settings.NOTIFICATION_BACKOFF_SECONDS = 2.0
    settings.RECEIVER_BREAKER_FAILURES = 5


@pytest.fixture
def builtins_quiet(seeded):
    """Only the receivers a test makes get alerts."""
    Receiver.objects.update(default=False)


@pytest.fixture
def http_receiver():
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def make_receiver(name: str, kind: str, config: dict, **fields) -> Receiver:
    receiver = Receiver(name=name, kind=kind, config=config, **{"default": True, **fields})
    receiver.full_clean()
    receiver.save()
    return receiver


def fire(capture, labels=LABELS):
    rule = AlertRule.objects.get(name="agent-heartbeat")
    with capture(execute=True):
        return lifecycle.fire_alert(rule, labels)


def verify(secret: str, received) -> bool:
    timestamp = received.headers["X-Omoi-Timestamp"]
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(received.headers["X-Omoi-Signature"], f"sha256={expected}")


@pytest.mark.django_db
def test_it_posts_the_alertmanager_webhook_payload_signed(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    make_receiver("hook", "webhook", {"url": http_receiver.url + "/hook", "secret": SECRET})

    alert = fire(django_capture_on_commit_callbacks)

    [received] = http_receiver.requests
    assert received.path == "/hook"
    assert verify(SECRET, received)
    payload = received.json()
    assert payload["version"] == "4"
    assert payload["status"] == "firing"
    assert payload["receiver"] == "hook"
    for key in ("groupKey", "groupLabels", "commonLabels", "commonAnnotations", "externalURL"):
        assert key in payload
    [sent] = payload["alerts"]
    assert set(sent) >= {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    }
    assert sent["labels"]["alertname"] == "agent-heartbeat"
    assert sent["labels"]["agent_id"] == "worker-01"
    assert sent["annotations"]["summary"] == alert.summary
    assert sent["endsAt"] == "0001-01-01T00:00:00Z"
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.SENT
    assert notification.channel == "webhook"
    assert notification.target == http_receiver.url
    assert notification.latency_ms is not None


@pytest.mark.django_db
def test_it_signs_nothing_without_a_secret_and_a_tampered_body_fails_verification(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    make_receiver("hook", "webhook", {"url": http_receiver.url, "secret": SECRET})
    fire(django_capture_on_commit_callbacks)
    [received] = http_receiver.requests
    received.body = received.body.replace(b"firing", b"resolved")
    assert not verify(SECRET, received)

    Receiver.objects.filter(name="hook").update(config={"url": http_receiver.url})
    resolved = lifecycle.open_alert_for(AlertRule.objects.get(name="agent-heartbeat"), {**LABELS})
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.resolve_alert(resolved, reason="test")
    assert "X-Omoi-Signature" not in http_receiver.requests[-1].headers
    assert http_receiver.requests[-1].json()["status"] == "resolved"


@pytest.mark.django_db
def test_it_renders_a_templated_body_in_the_sandbox(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    template = '{"text": {{ commonAnnotations.summary | tojson }}, "n": {{ alerts | length }}}'
    make_receiver("hook", "webhook", {"url": http_receiver.url, "template": template})

    alert = fire(django_capture_on_commit_callbacks)

    assert http_receiver.requests[0].json() == {"text": alert.summary, "n": 1}


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        '{"x": "{{ "a" * 100000000 }}"}',
        "{% for %}",
        "not json {{ status }}",
    ],
)
def test_it_refuses_templates_that_escape_the_sandbox_or_do_not_render_json(template):
    with pytest.raises(ValidationError) as caught:
        REGISTRY["webhook"].validate_config(
            {"url": "https://hooks.example.com", "template": template}
        )
    assert "template" in caught.value.message_dict


@pytest.mark.django_db
def test_it_retries_5xx_with_backoff_then_dead_letters(
    builtins_quiet, http_receiver, clock, django_capture_on_commit_callbacks
):
    http_receiver.answers = [Answer(503, b"busy")]
    make_receiver("hook", "webhook", {"url": http_receiver.url})

    fire(django_capture_on_commit_callbacks)
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.PENDING
    assert notification.attempts == 1
    assert "HTTP 503" in notification.last_error
    # Exponential with jitter in the upper half: 2 s then 4 s ceilings.
    assert NOW + timedelta(seconds=1) <= notification.next_attempt_at <= NOW + timedelta(seconds=2)

    clock.shift(2)
    assert delivery.deliver_due_notifications() == 1
    notification.refresh_from_db()
    assert notification.attempts == 2
    second = notification.next_attempt_at - timezone.now()
    assert timedelta(seconds=2) <= second <= timedelta(seconds=4)

    clock.shift(1)
    assert delivery.deliver_due_notifications() == 0  # not due yet
    clock.shift(3)
    delivery.deliver_due_notifications()
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.DEAD
    assert notification.attempts == 3
    assert notification.dead_at == timezone.now()
    assert len(http_receiver.requests) == 3


@pytest.mark.parametrize("attempts", range(1, 15))
def test_it_caps_the_backoff(settings, attempts):
    settings.NOTIFICATION_BACKOFF_SECONDS = 2.0
    settings.NOTIFICATION_BACKOFF_MAX_SECONDS = 60.0
    ceiling = min(60.0, 2.0 * 2 ** (attempts - 1))
    assert ceiling / 2 <= delivery.backoff_seconds(attempts) <= ceiling


@pytest.mark.django_db
def test_it_sends_a_4xx_straight_to_the_dead_letter(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    http_receiver.answers = [Answer(404, b"no such hook")]
    make_receiver("hook", "webhook", {"url": http_receiver.url})

    fire(django_capture_on_commit_callbacks)

    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.DEAD
    assert notification.attempts == 1
    assert notification.last_error.endswith("HTTP 404: no such hook")
    # The receiver answered: a refusal is not an outage.
    assert Receiver.objects.get(name="hook").consecutive_failures == 0


@pytest.mark.django_db
def test_it_waits_for_retry_after_on_429(
    builtins_quiet, http_receiver, clock, django_capture_on_commit_callbacks
):
    http_receiver.answers = [Answer(429, headers={"Retry-After": "120"}), Answer(200)]
    make_receiver("hook", "webhook", {"url": http_receiver.url})

    fire(django_capture_on_commit_callbacks)

    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.PENDING
    assert notification.next_attempt_at == NOW + timedelta(seconds=120)
    clock.shift(119)
    assert delivery.deliver_due_notifications() == 0
    clock.shift(1)
    assert delivery.deliver_due_notifications() == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT


def test_it_reads_retry_after_as_seconds_or_an_http_date(settings):
    settings.NOTIFICATION_RETRY_AFTER_MAX_SECONDS = 3600
    now = datetime(2015, 10, 21, 7, 27, tzinfo=UTC)
    assert retry_after_seconds("30") == 30
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 60
    assert retry_after_seconds("Wed, 21 Oct 2015 07:00:00 GMT", now=now) == 0
    assert retry_after_seconds("999999") == 3600
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


@pytest.mark.django_db
def test_it_classifies_a_timeout_as_transient(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    http_receiver.answers = [Answer(200, delay=2.0)]
    make_receiver("slow", "webhook", {"url": http_receiver.url, "timeout": 0.2})

    fire(django_capture_on_commit_callbacks)

    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.PENDING
    assert notification.last_error.endswith("timed out after 0.2s")
    assert Receiver.objects.get(name="slow").consecutive_failures == 1


@pytest.mark.django_db
def test_it_delivers_each_receiver_on_its_own_and_never_inside_the_firing(
    builtins_quiet, http_receiver, monkeypatch, django_capture_on_commit_callbacks
):
    http_receiver.answers = [Answer(200, delay=2.0), Answer(200)]
    slow = make_receiver("slow", "webhook", {"url": http_receiver.url + "/slow", "timeout": 0.2})
    make_receiver("fast", "slack", {"url": http_receiver.url + "/fast"})
    queued = []
    monkeypatch.setattr(delivery, "enqueue_delivery", queued.append)

    fire(django_capture_on_commit_callbacks)

    # Firing saved one notification per receiver and queued one task each, sending nothing.
    assert http_receiver.requests == []
    assert len(queued) == 2
    by_receiver = {n.receiver.name: n.pk for n in Notification.objects.select_related("receiver")}
    assert delivery.deliver_notification(by_receiver["slow"]) == NotificationStatus.PENDING
    assert delivery.deliver_notification(by_receiver["fast"]) == NotificationStatus.SENT
    assert slow.notifications.get().status == NotificationStatus.PENDING


@pytest.mark.django_db
def test_it_opens_the_circuit_after_n_failures_and_closes_on_success(
    settings, builtins_quiet, http_receiver, clock, django_capture_on_commit_callbacks
):
    settings.RECEIVER_BREAKER_FAILURES = 2
    settings.RECEIVER_BREAKER_OPEN_SECONDS = 300
    http_receiver.answers = [Answer(503)]
    make_receiver("hook", "webhook", {"url": http_receiver.url})

    fire(django_capture_on_commit_callbacks, {"agent_id": "a-1", "role": "worker"})
    fire(django_capture_on_commit_callbacks, {"agent_id": "a-2", "role": "worker"})
    receiver = Receiver.objects.get(name="hook")
    assert receiver.consecutive_failures == 2
    assert receiver.circuit_open_until == NOW + timedelta(seconds=300)

    # Open: a new notification and the due retries wait instead of calling.
    fire(django_capture_on_commit_callbacks, {"agent_id": "a-3", "role": "worker"})
    clock.shift(10)
    delivery.deliver_due_notifications()
    assert len(http_receiver.requests) == 2
    waiting = Notification.objects.filter(status=NotificationStatus.PENDING)
    assert waiting.count() == 3
    assert all(n.next_attempt_at == receiver.circuit_open_until for n in waiting)
    assert Notification.objects.get(alert__labels__agent_id="a-3").attempts == 0

    http_receiver.answers = [Answer(200)]
    clock.shift(291)
    assert delivery.deliver_due_notifications() == 3
    receiver.refresh_from_db()
    assert receiver.consecutive_failures == 0
    assert receiver.circuit_open_until is None
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}


@pytest.mark.django_db
def test_it_hands_a_dead_notification_to_the_fallback(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    http_receiver.answers = [Answer(410, b"gone"), Answer(200)]
    backup = make_receiver("backup", "webhook", {"url": http_receiver.url + "/b"}, default=False)
    make_receiver("primary", "webhook", {"url": http_receiver.url + "/p"}, fallback=backup)

    fire(django_capture_on_commit_callbacks)

    primary = Notification.objects.get(receiver__name="primary")
    second = Notification.objects.get(receiver__name="backup")
    assert primary.status == NotificationStatus.DEAD
    assert second.status == NotificationStatus.SENT
    assert second.fallback_from == primary
    assert [r.path for r in http_receiver.requests] == ["/p", "/b"]


@pytest.mark.django_db
def test_it_refuses_fallback_cycles(builtins_quiet):
    a = make_receiver("a", "console", {})
    b = make_receiver("b", "console", {}, fallback=a)
    a.fallback = b
    with pytest.raises(ValidationError) as caught:
        a.full_clean()
    assert "fallback" in caught.value.message_dict
    a.fallback = a
    with pytest.raises(ValidationError):
        a.full_clean()


@pytest.mark.django_db
def test_it_resends_a_dead_notification_once(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    http_receiver.answers = [Answer(400, b"bad"), Answer(200)]
    make_receiver("hook", "webhook", {"url": http_receiver.url})
    fire(django_capture_on_commit_callbacks)
    dead = Notification.objects.get()
    assert dead.status == NotificationStatus.DEAD

    with django_capture_on_commit_callbacks(execute=True):
        again = delivery.resend_notification(dead.pk)

    again.refresh_from_db()
    assert again.status == NotificationStatus.SENT
    assert again.resent_from == dead
    dead.refresh_from_db()
    assert dead.status == NotificationStatus.DEAD  # the history stays as it was
    with pytest.raises(delivery.NotResendable):
        delivery.resend_notification(dead.pk)
    with pytest.raises(delivery.NotResendable):
        delivery.resend_notification(again.pk)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_it_refuses_private_targets_when_not_allowed(settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(ValidationError) as caught:
        REGISTRY["webhook"].validate_config({"url": url})
    assert "refused" in caught.value.message_dict["url"][0]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("93.184.216.34", None),
    ],
)
def test_it_names_why_an_address_is_refused(address, reason):
    assert refused_reason(address) == reason


@pytest.mark.django_db
def test_it_refuses_a_name_that_resolves_to_loopback_at_send_time(
    settings, builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    port = http_receiver.server.server_address[1]
    make_receiver("hook", "webhook", {"url": f"http://localhost:{port}/hook"})
    settings.WEBHOOK_ALLOW_PRIVATE = False

    fire(django_capture_on_commit_callbacks)

    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.DEAD
    assert "refused loopback address" in notification.last_error
    assert http_receiver.requests == []


@pytest.mark.django_db
def test_it_keeps_secrets_out_of_errors_targets_and_logs(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    token_path = "/services/T000/B000/slacktoken0123456789"
    # Receivers that echo what they got back in their error pages (chat is sent first).
    http_receiver.answers = [
        Answer(500, f"boom {token_path}".encode()),
        Answer(500, f"boom {SECRET}".encode()),
    ]
    make_receiver("hook", "webhook", {"url": http_receiver.url, "secret": SECRET})
    make_receiver("chat", "slack", {"url": http_receiver.url + token_path})
    lines = []

    with captured_log(lines):
        fire(django_capture_on_commit_callbacks)

    notifications = list(Notification.objects.all())
    assert len(notifications) == 2
    for notification in notifications:
        assert "HTTP 500" in notification.last_error
        for text in (notification.last_error, notification.target):
            assert SECRET not in text
            assert "slacktoken" not in text
    logged = json.dumps(lines)
    assert "notification.failed" in logged
    assert SECRET not in logged
    assert "slacktoken" not in logged


@pytest.mark.django_db
def test_it_posts_slack_blocks(builtins_quiet, http_receiver, django_capture_on_commit_callbacks):
    make_receiver("chat", "slack", {"url": http_receiver.url + "/services/T/B/x"})

    alert = fire(django_capture_on_commit_callbacks)

    message = http_receiver.requests[0].json()
    assert alert.summary in message["text"]
    kinds = [block["type"] for block in message["blocks"]]
    assert kinds == ["header", "section", "section", "context"]
    assert message["blocks"][0]["text"] == {
        "type": "plain_text",
        "text": "[FIRING] agent-heartbeat",
    }
    fields = [f["text"] for f in message["blocks"][2]["fields"]]
    assert "*agent_id*\nworker-01" in fields
    assert Notification.objects.get().target == http_receiver.url


@pytest.mark.django_db
def test_it_mails_a_receivers_own_recipients_over_real_smtp(
    settings, builtins_quiet, django_capture_on_commit_callbacks
):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
        make_receiver("team", "email", {"to": ["team@example.org", "lead@example.org"]})
        fire(django_capture_on_commit_callbacks)
        assert inbox.received.wait(5)
    finally:
        controller.stop()
    assert sorted(inbox.messages[0].rcpt_tos) == ["lead@example.org", "team@example.org"]
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.SENT
    assert notification.target == "team@example.org,lead@example.org"


@pytest.mark.django_db
def test_it_skips_resolutions_for_receivers_that_do_not_want_them(
    builtins_quiet, http_receiver, django_capture_on_commit_callbacks
):
    make_receiver("quiet", "webhook", {"url": http_receiver.url}, send_resolved=False)
    make_receiver("loud", "console", {})
    alert = fire(django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.resolve_alert(alert, reason="test")

    kinds = sorted(Notification.objects.values_list("receiver__name", "kind"))
    assert kinds == [
        ("loud", "firing"),
        ("loud", "resolved"),
        ("quiet", "firing"),
    ]


def test_it_finds_every_channel_module_and_takes_new_ones_by_decorator():
    assert {"console", "email", "webhook", "slack", "alertmanager"} <= set(REGISTRY)

    @register
    class Teams(Transport):
        kind = "teams-test"
        label = "Teams"

    try:
        assert REGISTRY["teams-test"].label == "Teams"
        with pytest.raises(RuntimeError):
            register(Teams)
    finally:
        del REGISTRY["teams-test"]


def test_it_names_each_bad_setting(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(ValidationError) as caught:
        REGISTRY["webhook"].validate_config(
            {"url": "ftp://x", "secret": "short", "timeout": 99, "colour": "red"}
        )
    assert set(caught.value.message_dict) == {"colour"}
    with pytest.raises(ValidationError) as caught:
        REGISTRY["webhook"].validate_config({"url": "ftp://x", "secret": "short", "timeout": 99})
    assert set(caught.value.message_dict) == {"url", "secret", "timeout"}
    with pytest.raises(ValidationError) as caught:
        REGISTRY["email"].validate_config({"to": ["not-an-address"]})
    assert set(caught.value.message_dict) == {"to"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_resends_a_dead_notification_once_when_two_operators_race(
    builtins_quiet, http_receiver, monkeypatch
):
    import threading

    from django.db import connections

    http_receiver.answers = [Answer(400)]
    monkeypatch.setattr(delivery, "enqueue_delivery", lambda notification_id: None)
    make_receiver("hook", "webhook", {"url": http_receiver.url})
    lifecycle.fire_alert(AlertRule.objects.get(name="agent-heartbeat"), LABELS)
    dead = Notification.objects.get()
    delivery.deliver_notification(dead.pk)
    barrier = threading.Barrier(2)
    outcomes = []

    def resend():
        try:
            barrier.wait(10)
            delivery.resend_notification(dead.pk)
            outcomes.append("resent")
        except delivery.NotResendable:
            outcomes.append("refused")
        finally:
            connections.close_all()

    workers = [threading.Thread(target=resend) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(20)

    assert sorted(outcomes) == ["refused", "resent"]
    assert Notification.objects.filter(resent_from=dead).count() == 1
