"""The Django admin: every page an admin can reach renders, and tokens are revoked, not made."""

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from alerting.lifecycle import fire_heartbeat_alerts
from alerting.models import AlertRule
from monitoring.models import Agent, AgentToken
from omoi_console.foundation.roles import PRODUCT_APPS
from omoi_console.models import Event, OperatorToken


@pytest.fixture
def admin_client(client, make_operator, registered_agent):
    user, _ = make_operator("admin")
    client.force_login(user)
    # Something on every list page: an alert with notifications, events, tokens.
    agent, _ = registered_agent
    fire_heartbeat_alerts({"agent_id": agent.id, "role": agent.role})
    return client


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.mark.django_db
def test_it_renders_every_list_and_change_page_for_admins(admin_client):
    product_models = [m for m in admin.site._registry if m._meta.app_label in PRODUCT_APPS]
    assert len(product_models) >= 8
    for model in product_models:
        listing = admin_client.get(admin_url(model, "changelist"))
        assert listing.status_code == 200, model
        first = model._default_manager.first()
        if first is not None:
            assert admin_client.get(admin_url(model, "change", first.pk)).status_code == 200, model
    assert Event.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("model", [AgentToken, OperatorToken])
def test_it_revokes_tokens_but_never_creates_them(admin_client, model):
    assert admin_client.get(admin_url(model, "add")).status_code == 403
    token = model.objects.get()
    response = admin_client.post(
        admin_url(model, "changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


@pytest.mark.django_db
def test_it_keeps_viewers_out_of_the_admin(client, make_operator):
    user, _ = make_operator("viewer")
    client.force_login(user)
    response = client.get(admin_url(Event, "changelist"))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def admin_form(model, user, instance, data):
    request = RequestFactory().post("/")
    request.user = user
    form_class = admin.site._registry[model].get_form(request, obj=instance)
    return form_class(data=data, instance=instance)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("labels", "interval", "bad"),
    [
        ('{"zone": "a"}', "1e15", "heartbeat_interval"),
        ('{"zone": "a"}', "-5", "heartbeat_interval"),
        ('{"zone": NaN}', "5", "labels"),
        ('{"zone": "\\ud800"}', "5", "labels"),
        ('{"zone": "a\\u0000"}', "5", "labels"),
        ('{"": "a"}', "5", "labels"),
        ('{"zone": {"nested": 1}}', "5", "labels"),
    ],
)
def test_the_admin_holds_agents_to_the_apis_rules(
    make_operator, registered_agent, labels, interval, bad
):
    user, _ = make_operator("admin")
    agent, _ = registered_agent
    data = {"role": "worker", "labels": labels, "heartbeat_interval": interval}

    form = admin_form(Agent, user, agent, data)

    assert not form.is_valid()
    assert list(form.errors) == [bad]


@pytest.mark.django_db
def test_the_admin_saves_what_the_rules_allow(make_operator, registered_agent):
    user, _ = make_operator("admin")
    agent, _ = registered_agent
    data = {"role": "worker", "labels": '{"zone": "eu-1"}', "heartbeat_interval": "2.5"}

    form = admin_form(Agent, user, agent, data)

    assert form.is_valid(), form.errors
    assert "id" not in form.fields  # the primary key is read-only once it exists


@pytest.mark.django_db
def test_the_admin_refuses_rule_labels_it_could_not_store(make_operator):
    user, _ = make_operator("admin")
    rule = AlertRule.objects.get(name="agent-heartbeat")
    data = {
        "name": rule.name,
        "kind": rule.kind,
        "severity": rule.severity,
        "summary": rule.summary,
        "labels__key": ["team", "bad key!"],
        "labels__value": ["core", "x"],
        "annotations__key": ["runbook"],
        "annotations__value": ["x" * 2001],
        "enabled": "on",
        "for_duration": "0s",
        "keep_firing_for": "0s",
        "evaluate_every": "15s",
    }

    form = admin_form(AlertRule, user, rule, data)

    assert not form.is_valid()
    assert set(form.errors) == {"labels", "annotations"}


@pytest.mark.django_db
def test_it_shows_anomalies_without_letting_anyone_edit_them(admin_client):
    from datetime import timedelta

    from django.utils import timezone

    from monitoring.models import MetricSeries, MonitorAnomaly

    series = MetricSeries.objects.create(
        metric="error_rate", labels={"agent": "w1"}, fingerprint="f" * 32, agent_id="w1"
    )
    found = MonitorAnomaly.objects.create(
        series=series,
        metric="error_rate",
        agent_id="w1",
        started_at=timezone.now() - timedelta(minutes=5),
        peak_score=6.5,
        direction="up",
        detector="ewma",
        severity="error",
        explanation={"expected_low": 0.0, "expected_high": 0.05, "observed": 0.4},
    )

    listing = admin_client.get(admin_url(MonitorAnomaly, "changelist"))
    page = admin_client.get(admin_url(MonitorAnomaly, "change", found.pk))
    edit = admin_client.post(admin_url(MonitorAnomaly, "change", found.pk), {"severity": "info"})

    assert listing.status_code == 200 and b"ewma" in listing.content
    assert page.status_code == 200 and b"Save" not in page.content
    assert edit.status_code == 403
    assert admin_client.get(admin_url(MonitorAnomaly, "add")).status_code == 403
    found.refresh_from_db()
    assert found.severity == "error"


@pytest.mark.django_db(transaction=True)
def test_audit_rows_are_read_only_and_agents_and_actions_cannot_be_deleted(admin_client):
    from monitoring.models import AgentCommand
    from monitoring.services import record_heartbeat
    from watchdog.models import RemediationAction, RemediationPolicy

    agent = Agent.objects.get()
    record_heartbeat(agent, state="failed")  # the default policy restarts it
    action = RemediationAction.objects.get()
    command = AgentCommand.objects.get()

    for model, pk in (
        (Agent, agent.pk),
        (RemediationAction, action.pk),
        (AgentCommand, command.pk),
    ):
        assert admin_client.post(admin_url(model, "delete", pk), {"post": "yes"}).status_code == 403
        page = admin_client.get(admin_url(model, "change", pk)).content.decode()
        assert admin_url(model, "delete", pk) not in page
    assert admin_client.get(admin_url(AgentCommand, "add")).status_code == 403
    edited = admin_client.post(
        admin_url(AgentCommand, "change", command.pk), {"issued_by": "someone", "status": "acked"}
    )
    assert edited.status_code == 403
    command.refresh_from_db()
    assert (command.issued_by, command.status) == ("watchdog", "queued")
    assert Agent.objects.filter(pk=agent.pk).exists()
    assert RemediationAction.objects.filter(pk=action.pk).exists()

    # A policy with a step no module provides is refused by its form, naming the field.
    policy = RemediationPolicy.objects.get()
    form = admin_client.get(admin_url(RemediationPolicy, "change", policy.pk)).context["adminform"]
    data = {
        **{k: v for k, v in form.form.initial.items() if v is not None},
        "steps": '[{"kind": "reboot_the_world"}]',
        "matchers": "[]",
    }
    refused = admin_client.post(admin_url(RemediationPolicy, "change", policy.pk), data)
    assert refused.status_code == 200
    assert "reboot_the_world" in refused.content.decode()
    policy.refresh_from_db()
    assert policy.steps[0]["kind"] == "restart_worker"
