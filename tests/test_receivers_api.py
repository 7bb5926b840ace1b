"""Receivers and notifications over the API and in the admin: per-kind validation,
write-only secrets, the dead letter and its re-send."""

import pytest
from django.urls import reverse

from alerting import delivery, lifecycle
from alerting.models import Alert, AlertRule, Notification, NotificationStatus, Receiver
from tests.conftest import bearer
from tests.delivery_receivers import Answer, HttpReceiver

SECRET = "whsec-0123456789abcdef-write-only"
SLACK_URL = "https://hooks.slack.com/services/T000/B000/slacktoken0123456789"


@pytest.fixture(autouse=True)
def allow_loopback(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def admin_token(make_operator):
    return make_operator("admin", "receiver-admin")[1]


def create(api, token, body):
    return api.post("/api/v1/receivers", body, format="json", **bearer(token))


@pytest.mark.django_db
def test_it_never_shows_a_secret_back(api, admin_token):
    response = create(
        api,
        admin_token,
        {
            "name": "hook",
            "kind": "webhook",
            "config": {"url": "https://hooks.example.com/omoi", "secret": SECRET},
        },
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    # The URL is a secret too: many services carry their credential in it.
    assert body["config"] == {}
    assert body["secrets_set"] == ["secret", "url"]
    assert body["target"] == "https://hooks.example.com"
    chat = create(api, admin_token, {"name": "chat", "kind": "slack", "config": {"url": SLACK_URL}})
    assert chat.status_code == 201
    assert chat.json()["config"] == {}
    assert chat.json()["secrets_set"] == ["url"]

    listing = api.get("/api/v1/receivers", **bearer(admin_token))
    detail = api.get(f"/api/v1/receivers/{body['id']}", **bearer(admin_token))
    for text in (listing.content, detail.content):
        assert SECRET.encode() not in text
        assert b"slacktoken" not in text

    # An edit that leaves the secret out keeps it; null clears it.
    url = f"/api/v1/receivers/{body['id']}"
    patched = api.patch(
        url,
        {"config": {"url": "https://hooks.example.com/v2"}},
        format="json",
        **bearer(admin_token),
    )
    assert patched.status_code == 200
    assert patched.json()["secrets_set"] == ["secret", "url"]
    assert Receiver.objects.get(name="hook").config["secret"] == SECRET
    assert Receiver.objects.get(name="hook").config["url"] == "https://hooks.example.com/v2"
    cleared = api.patch(
        url,
        {"config": {"url": "https://hooks.example.com/v2", "secret": None}},
        format="json",
        **bearer(admin_token),
    )
    assert cleared.json()["secrets_set"] == ["url"]
    assert "secret" not in Receiver.objects.get(name="hook").config


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "kind": "pager", "config": {}}, "kind"),
        ({"name": "x", "kind": "webhook", "config": {}}, "config.url"),
        ({"name": "x", "kind": "webhook", "config": {"url": "ftp://h"}}, "config.url"),
        (
            {"name": "x", "kind": "webhook", "config": {"url": "https://h", "timeout": 99}},
            "config.timeout",
        ),
        (
            {"name": "x", "kind": "webhook", "config": {"url": "https://h", "secret": "short"}},
            "config.secret",
        ),
        (
            {
                "name": "x",
                "kind": "webhook",
                "config": {"url": "https://h", "template": "{% if %}"},
            },
            "config.template",
        ),
        ({"name": "x", "kind": "email", "config": {"to": ["nope"]}}, "config.to"),
        ({"name": "x", "kind": "console", "config": {"colour": "red"}}, "config.colour"),
        ({"name": "x", "kind": "console", "config": ["not", "an", "object"]}, "config"),
        ({"name": "x y", "kind": "console"}, "name"),
        ({"name": "x", "kind": "console", "fallback": "missing"}, "fallback"),
        ({"name": "x", "kind": "console", "surprise": 1}, "surprise"),
    ],
)
def test_it_refuses_bad_receivers_naming_the_field_and_saving_nothing(
    api, admin_token, body, field
):
    before = Receiver.objects.count()

    response = create(api, admin_token, body)

    assert response.status_code == 422, response.json()
    assert field in [e["field"] for e in response.json()["errors"]]
    assert Receiver.objects.count() == before


@pytest.mark.django_db
def test_it_refuses_a_private_target_over_the_api_when_not_allowed(settings, api, admin_token):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    body = {"name": "meta", "kind": "webhook", "config": {"url": "http://169.254.169.254/"}}

    response = create(api, admin_token, body)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "config.url"
    assert not Receiver.objects.filter(name="meta").exists()


@pytest.mark.django_db
def test_it_refuses_a_fallback_cycle_over_the_api(api, admin_token):
    a = create(api, admin_token, {"name": "a", "kind": "console"}).json()
    create(api, admin_token, {"name": "b", "kind": "console", "fallback": "a"})

    response = api.patch(
        f"/api/v1/receivers/{a['id']}", {"fallback": "b"}, format="json", **bearer(admin_token)
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "fallback"
    assert Receiver.objects.get(name="a").fallback is None


@pytest.mark.django_db
def test_it_lets_only_admins_change_receivers(api, make_operator, admin_token):
    _, viewer = make_operator("viewer")
    _, operator = make_operator("operator")
    body = {"name": "x", "kind": "console"}
    assert api.get("/api/v1/receivers", **bearer(viewer)).status_code == 200
    assert create(api, viewer, body).status_code == 403
    assert create(api, operator, body).status_code == 403
    assert api.get("/api/v1/receivers").status_code == 401
    assert create(api, admin_token, body).status_code == 201


@pytest.mark.django_db
def test_it_keeps_a_receiver_with_history_and_says_why(api, admin_token, registered_agent):
    lifecycle.fire_heartbeat_alerts({"agent_id": "worker-01", "role": "worker"})
    console = Receiver.objects.get(name="console")

    response = api.delete(f"/api/v1/receivers/{console.pk}", **bearer(admin_token))

    assert response.status_code == 409
    assert "disable it instead" in response.json()["detail"]
    spare = create(api, admin_token, {"name": "spare", "kind": "console"}).json()
    assert api.delete(f"/api/v1/receivers/{spare['id']}", **bearer(admin_token)).status_code == 204


@pytest.mark.django_db
def test_it_sends_a_test_notification_and_reports_the_outcome(api, admin_token):
    with HttpReceiver() as server:
        server.answers = [Answer(200), Answer(403, b"nope")]
        hook = create(
            api,
            admin_token,
            {
                "name": "hook",
                "kind": "webhook",
                "config": {"url": server.url + "/hook/t0ken", "secret": SECRET},
            },
        ).json()
        url = f"/api/v1/receivers/{hook['id']}/test"
        first = api.post(url, **bearer(admin_token)).json()
        second = api.post(url, **bearer(admin_token)).json()
    assert first["delivered"] is True
    assert server.requests[0].json()["alerts"][0]["labels"]["alertname"] == "test-notification"
    assert second == {
        "delivered": False,
        "error": f"{server.url}: HTTP 403: nope",
        "latency_ms": second["latency_ms"],
    }
    assert not Notification.objects.exists()


@pytest.fixture
def dead_notification(seeded, django_capture_on_commit_callbacks):
    Receiver.objects.update(default=False)
    server = HttpReceiver().__enter__()
    server.answers = [Answer(400, b"bad payload"), Answer(200)]
    Receiver.objects.create(name="hook", kind="webhook", config={"url": server.url}, default=True)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.fire_alert(
            AlertRule.objects.get(name="agent-heartbeat"), {"agent_id": "w-1", "role": "worker"}
        )
    yield Notification.objects.get()
    server.__exit__(None, None, None)


@pytest.mark.django_db
def test_it_lists_dead_notifications_and_lets_operators_resend_them(
    api, make_operator, dead_notification, django_capture_on_commit_callbacks
):
    _, viewer = make_operator("viewer")
    _, operator = make_operator("operator")
    dead = api.get("/api/v1/notifications?status=dead&receiver=hook", **bearer(viewer)).json()
    assert [n["id"] for n in dead["results"]] == [dead_notification.pk]
    assert dead["results"][0]["last_error"].endswith("HTTP 400: bad payload")
    assert api.get("/api/v1/notifications?status=bogus", **bearer(viewer)).status_code == 422
    alert_filter = f"/api/v1/notifications?alert={dead_notification.alert_id}&channel=webhook"
    assert api.get(alert_filter, **bearer(viewer)).json()["count"] == 1

    url = f"/api/v1/notifications/{dead_notification.pk}/resend"
    assert api.post(url, **bearer(viewer)).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(url, **bearer(operator))
    assert response.status_code == 201
    again = Notification.objects.get(pk=response.json()["id"])
    assert again.status == NotificationStatus.SENT
    assert again.resent_from_id == dead_notification.pk
    assert api.post(url, **bearer(operator)).status_code == 409
    sent = f"/api/v1/notifications/{again.pk}/resend"
    assert api.post(sent, **bearer(operator)).status_code == 409
    assert api.post("/api/v1/notifications/999999/resend", **bearer(operator)).status_code == 404


@pytest.mark.django_db
def test_it_keeps_notifications_read_only_and_undeletable_in_the_admin(
    client, make_operator, dead_notification, django_capture_on_commit_callbacks
):
    user, _ = make_operator("admin")
    client.force_login(user)
    change = reverse("admin:alerting_notification_change", args=[dead_notification.pk])
    delete = reverse("admin:alerting_notification_delete", args=[dead_notification.pk])
    changelist = reverse("admin:alerting_notification_changelist")

    page = client.get(change)
    assert page.status_code == 200
    assert b'name="last_error"' not in page.content  # shown, not editable
    assert client.get(delete).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    bulk_delete = {"action": "delete_selected", "_selected_action": [dead_notification.pk]}
    client.post(changelist, bulk_delete)
    assert Notification.objects.filter(pk=dead_notification.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            changelist, {"action": "resend", "_selected_action": [dead_notification.pk]}
        )
    assert response.status_code == 302
    assert dead_notification.resent_as.status == NotificationStatus.SENT


@pytest.mark.django_db
def test_it_validates_receivers_per_kind_in_the_admin_and_hides_secrets(client, make_operator):
    user, _ = make_operator("admin")
    client.force_login(user)
    add = reverse("admin:alerting_receiver_add")
    form = {
        "name": "hook",
        "kind": "webhook",
        "config": '{"url": "ftp://nowhere"}',
        "enabled": "on",
        "send_resolved": "on",
    }
    refused = client.post(add, form)
    assert refused.status_code == 200
    assert b"url: must be an http or https URL" in refused.content
    assert not Receiver.objects.filter(name="hook").exists()

    form["config"] = f'{{"url": "https://hooks.example.com", "secret": "{SECRET}"}}'
    assert client.post(add, form).status_code == 302
    hook = Receiver.objects.get(name="hook")
    change = reverse("admin:alerting_receiver_change", args=[hook.pk])
    page = client.get(change)
    assert SECRET.encode() not in page.content
    form["config"] = '{"url": "https://hooks.example.com/v2"}'
    assert client.post(change, form).status_code == 302
    hook.refresh_from_db()
    assert hook.config == {"url": "https://hooks.example.com/v2", "secret": SECRET}


def test_a_held_back_alerts_resolution_goes_only_to_receivers_that_ask_for_it():
    held, told = Alert(suppressed_by="silence 1"), Alert(suppressed_by="")
    plain = Receiver(send_resolved=True, send_resolved_when_silenced=False)
    eager = Receiver(send_resolved=True, send_resolved_when_silenced=True)
    quiet = Receiver(send_resolved=False, send_resolved_when_silenced=True)

    assert delivery.wants(plain, held, "resolved") is False
    assert delivery.wants(eager, held, "resolved") is True
    assert delivery.wants(plain, told, "resolved") is True
    assert delivery.wants(quiet, told, "resolved") is False
    assert delivery.wants(plain, held, "firing") is True
