"""Forwarding to Alertmanager: against the real binary (Debian's prometheus-alertmanager)
on a loopback port, and the resend of open alerts against a local receiver."""

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import time_machine

from alerting import lifecycle
from alerting.models import AlertRule, Notification, NotificationStatus, Receiver
from alerting.transports.alertmanager import resend_active_alerts
from tests.conftest import REQUIRE_SERVICES, free_port
from tests.delivery_receivers import HttpReceiver

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
CONFIG = """route:
  receiver: blackhole
receivers:
  - name: blackhole
"""
LABELS = {"agent_id": "worker-01", "role": "worker"}


@pytest.fixture(autouse=True)
def allow_loopback(settings, seeded):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    Receiver.objects.update(default=False)


@pytest.fixture
def alertmanager(tmp_path):
    if BINARY is None:
        if REQUIRE_SERVICES:
            pytest.fail("REQUIRE_SERVICES=1 but prometheus-alertmanager is not installed")
        pytest.skip("needs prometheus-alertmanager")
    (tmp_path / "alertmanager.yml").write_text(CONFIG)
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 -- our own arguments
        [
            BINARY,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"alertmanager did not start: {process.stderr.read()!r}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def our_alerts(url: str) -> list[dict]:
    alerts = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    return [a for a in alerts if a["labels"].get("alertname") == "agent-heartbeat"]


def fire(capture, labels=LABELS):
    with capture(execute=True):
        return lifecycle.fire_alert(AlertRule.objects.get(name="agent-heartbeat"), labels)


@pytest.mark.django_db
def test_it_forwards_alerts_to_a_real_alertmanager_and_resolves_them(
    alertmanager, django_capture_on_commit_callbacks
):
    receiver = Receiver(name="am", kind="alertmanager", config={"url": alertmanager}, default=True)
    receiver.full_clean()
    receiver.save()

    alert = fire(django_capture_on_commit_callbacks)

    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.SENT, notification.last_error
    [forwarded] = our_alerts(alertmanager)
    assert forwarded["labels"]["agent_id"] == "worker-01"
    assert forwarded["labels"]["severity"] == "critical"
    assert forwarded["annotations"]["summary"] == alert.summary
    assert forwarded["status"]["state"] == "active"
    ends_at = datetime.fromisoformat(forwarded["endsAt"].replace("Z", "+00:00"))
    # A few resend intervals ahead: Alertmanager resolves it by itself if we go away.
    ahead = ends_at - datetime.now(UTC)
    assert timedelta(minutes=3) < ahead <= timedelta(minutes=4, seconds=5)
    assert resend_active_alerts() == 1
    assert len(our_alerts(alertmanager)) == 1

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.resolve_alert(alert, reason="test")

    assert Notification.objects.filter(kind="resolved", status="sent").count() == 1
    # Alertmanager lists active alerts only; a resolved one drops out once processed.
    deadline = time.monotonic() + 10
    while our_alerts(alertmanager) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert our_alerts(alertmanager) == []
    assert resend_active_alerts() == 0


@pytest.mark.django_db
def test_it_resends_open_forwarded_alerts_with_ends_at_ahead(django_capture_on_commit_callbacks):
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    with HttpReceiver() as server, time_machine.travel(now, tick=False) as clock:
        Receiver.objects.create(
            name="am",
            kind="alertmanager",
            config={"url": server.url, "bearer_token": "am-token-0123456789abcdef"},
            default=True,
        )
        kept = fire(django_capture_on_commit_callbacks, {"agent_id": "a-1", "role": "worker"})
        gone = fire(django_capture_on_commit_callbacks, {"agent_id": "a-2", "role": "worker"})
        with django_capture_on_commit_callbacks(execute=True):
            lifecycle.resolve_alert(gone, reason="test")
        server.requests.clear()

        clock.shift(60)
        assert resend_active_alerts() == 1

    [request] = server.requests
    assert request.path == "/api/v2/alerts"
    assert request.headers["Authorization"] == "Bearer am-token-0123456789abcdef"
    [alert] = request.json()
    assert alert["labels"]["agent_id"] == kept.labels["agent_id"]
    assert alert["endsAt"] == "2026-03-02T12:05:00Z"  # resent at 12:01, four minutes ahead
