import pytest
import time_machine
import yaml
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from alerting import lifecycle
from alerting.models import Alert, Notification, NotificationKind, Receiver
from monitoring.models import AgentState
from monitoring.services import record_heartbeat
from watchdog import chains, policy_files
from watchdog.builtins import RESTART_POLICY, manual_policy
from watchdog.models import ActionStatus, EscalationChain, RemediationAction, RemediationPolicy

FILE = """\
escalation_chains:
- name: workers
  levels:
  - receivers:
    - oncall
    after: 0
  - receivers:
    - lead
    after: 300
  - guardian: true
    after: 600
policies:
- name: restart-failed-worker
  enabled: true
  trigger: agent_failed
  alert_rule: ''
  severity: ''
  matchers: []
  agent_role: worker
  steps:
  - kind: restart_worker
    after: 0
    verify: 60
  graceful_stop_seconds: 10
  cooldown_seconds: 60
  max_per_hour: 3
  dry_run: false
  priority: 100
  escalation_chain: workers
"""


@pytest.fixture
def receivers(seeded, settings):
    settings.WATCHDOG_GUARDIAN_RECEIVER = "guardian"
    for name in ("oncall", "lead", "guardian"):
        Receiver.objects.create(name=name, kind="console")


def with_environments(text: str, environments: dict) -> str:
    return text + yaml.safe_dump({"environments": environments})


@pytest.mark.django_db
def test_export_import_export_gives_the_same_text(receivers):
    policy_files.load(FILE)
    first = policy_files.dump()
    manual_policy()  # the product's: never exported, never pruned
    RemediationPolicy.objects.exclude(name="manual").delete()
    EscalationChain.objects.all().delete()

    result = policy_files.load(first, prune=True)

    assert first == FILE
    assert policy_files.dump() == first
    assert result.created == ["chain workers", f"policy {RESTART_POLICY}"]
    assert RemediationPolicy.objects.filter(name="manual").exists()


@pytest.mark.django_db
def test_the_environment_in_force_overrides_fields_by_name(receivers, settings):
    text = with_environments(
        FILE,
        {
            "staging": {
                "policies": {RESTART_POLICY: {"dry_run": True, "max_per_hour": 10}},
                "escalation_chains": {"workers": {"levels": [{"receivers": ["lead"]}]}},
            }
        },
    )
    settings.ENVIRONMENT = "production"
    policy_files.load(text)
    assert RemediationPolicy.objects.get(name=RESTART_POLICY).dry_run is False

    settings.ENVIRONMENT = "staging"
    result = policy_files.load(text)

    policy = RemediationPolicy.objects.get(name=RESTART_POLICY)
    assert (policy.dry_run, policy.max_per_hour) == (True, 10)
    assert EscalationChain.objects.get().levels == [{"receivers": ["lead"]}]
    assert result.environment == "staging"
    assert sorted(result.updated) == ["chain workers", f"policy {RESTART_POLICY}"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda t: t.replace("kind: restart_worker", "kind: reboot"),
            "steps: step 1: kind 'reboot'",
        ),
        (lambda t: t.replace("- lead", "- nobody"), "chain 'workers': levels: no receiver named"),
        (lambda t: t.replace("after: 300", "after: -1"), "level 2: after is whole seconds"),
        (lambda t: t.replace("escalation_chain: workers", "escalation_chain: other"), "other"),
        (lambda t: t.replace("priority: 100", "priority: 100\n  colour: red"), "'colour'"),
        (lambda t: t + "- name: restart-failed-worker\n  trigger: alert\n", "twice"),
        (
            lambda t: with_environments(t, {"ci": {"policies": {"ghost": {"dry_run": True}}}}),
            "environments.ci.policies: 'ghost' is not in the file",
        ),
        (lambda t: "policies: [", "not YAML"),
    ],
)
def test_an_invalid_file_changes_nothing_and_names_the_problem(
    receivers, settings, change, problem
):
    settings.ENVIRONMENT = "ci"
    before = policy_files.dump()
    broken = change(FILE)

    with pytest.raises(policy_files.PolicyFileError) as refused:
        policy_files.load(broken)

    assert problem in str(refused.value)
    assert policy_files.dump() == before
    assert not EscalationChain.objects.exists()


@pytest.mark.django_db
def test_a_guardian_level_needs_the_guardian_receiver_configured(receivers, settings):
    settings.WATCHDOG_GUARDIAN_RECEIVER = ""

    with pytest.raises(policy_files.PolicyFileError, match="needs OMOI_WATCHDOG_GUARDIAN_RECEIVER"):
        policy_files.load(FILE)


@pytest.mark.django_db
def test_the_command_imports_dry_runs_prunes_and_refuses(receivers, tmp_path, capsys):
    RemediationPolicy.objects.create(name="old", trigger="agent_failed")
    path = tmp_path / "policies.yaml"
    path.write_text(FILE)

    call_command("policies", "import", str(path), "--prune", "--dry-run")
    assert RemediationPolicy.objects.filter(name="old").exists()
    call_command("policies", "import", str(path), "--prune")
    out = capsys.readouterr().out

    assert "1 would be deleted: policy old" in out
    assert "1 were deleted: policy old" in out
    assert not RemediationPolicy.objects.filter(name="old").exists()
    path.write_text(FILE.replace("verify: 60", "verify: lots"))
    with pytest.raises(CommandError, match="nothing imported"):
        call_command("policies", "import", str(path))


# --- walking a chain --------------------------------------------------------------------


def escalated_action(agent, clock):
    """The policy escalates at once: its only step is ``escalate``."""
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(steps=[{"kind": "escalate"}])
    record_heartbeat(agent, state="running")
    record_heartbeat(agent, state="failed")
    action = RemediationAction.objects.get()
    assert action.status == ActionStatus.ESCALATED
    return action


def told():
    return sorted(
        Notification.objects.filter(kind=NotificationKind.ESCALATED).values_list(
            "receiver__name", flat=True
        )
    )


@pytest.mark.django_db(transaction=True)
def test_an_escalation_walks_the_chain_until_someone_acknowledges(receivers, registered_agent):
    agent, _ = registered_agent
    policy_files.load(FILE)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        escalated_action(agent, clock)
        assert chains.advance_escalations() == 1
        assert told() == ["oncall"]
        clock.shift(299)
        assert chains.advance_escalations() == 0
        clock.shift(2)
        assert chains.advance_escalations() == 1
        assert told() == ["lead", "oncall"]

        alert = Alert.objects.get(rule__name="remediation-failed")
        user = get_user_model().objects.create_user("olga")
        lifecycle.acknowledge_alert(alert, user)
        clock.shift(601)
        assert chains.advance_escalations() == 0

    action = RemediationAction.objects.get()
    assert told() == ["lead", "oncall"]  # the guardian was never needed
    assert action.escalation_next_at is None
    assert action.history[-1]["detail"].startswith("escalation stopped at level 2")


@pytest.mark.django_db(transaction=True)
def test_the_guardian_is_told_when_nobody_acts_and_recovery_ends_a_chain(
    receivers, registered_agent
):
    agent, _ = registered_agent
    policy_files.load(FILE)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        escalated_action(agent, clock)
        for _ in range(3):
            chains.advance_escalations()
            clock.shift(601)
        assert told() == ["guardian", "lead", "oncall"]
        assert RemediationAction.objects.get().escalation_next_at is None

        Notification.objects.all().delete()
        RemediationAction.objects.all().delete()
        record_heartbeat(agent, state="idle")
        record_heartbeat(agent, state="failed")  # a second failure, escalated again
        agent.refresh_from_db()
        assert agent.state == AgentState.FAILED
        clock.shift(1)
        record_heartbeat(agent, state="idle")  # healthy before level 1 was due
        assert chains.advance_escalations() == 0

    assert told() == []
