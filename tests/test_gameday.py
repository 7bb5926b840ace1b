import json
from datetime import datetime
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from monitoring.models import Agent, AgentState
from observability.models import LogRecord, SpanRecord
from tests.conftest import named, trace_of

# A short interval keeps the run to a few seconds: FAILED 5 s after the last heartbeat.
FAST = {"agents": 6, "interval": 1.0}


def run_gameday(tmp_path, **options):
    report = tmp_path / "report.json"
    out = StringIO()
    error = None
    try:
        call_command("gameday", **FAST, **options, report=report, stdout=out)
    except CommandError as exc:
        error = exc
    return json.loads(report.read_text()), out.getvalue(), error


@pytest.mark.django_db(transaction=True)
def test_it_proves_the_whole_loop(tmp_path, spans):
    report, out, error = run_gameday(tmp_path)

    assert error is None, out
    assert report["passed"] is True
    stages = {s["key"]: s for s in report["stages"]}
    assert all(s["ok"] for s in stages.values()), out
    order = [
        "heartbeat_lost",
        "alert_fired",
        "remediation_started",
        "agent_back",
        "alert_resolved",
    ]
    offsets = [stages[key]["offset_seconds"] for key in order]
    assert offsets == sorted(offsets)
    # Detection cannot beat the FAILED deadline (3 intervals + 2 s skew) ...
    assert stages["heartbeat_lost"]["offset_seconds"] >= 5.0
    # ... and the whole loop, failure to recovery, is one trace: the restart
    # command carried it to the heartbeat that answered it.
    loop = report["facts"]["trace_id"]
    assert {s["trace_id"] for s in stages.values()} == {loop}
    assert f"trace of the loop: {loop}" in out
    # The console's own store holds the loop's spans and log lines, as its pages show them.
    stored = report["facts"]["stored"]
    assert stored["spans"] == SpanRecord.objects.filter(trace_id=loop).count() > 0
    # A quiet terminal does not starve the store: the loop's log lines are kept too.
    assert stored["log_lines"] == LogRecord.objects.filter(trace_id=loop).count() > 0
    for name in (
        "alert.fire",
        "notification.deliver",
        "watchdog.remediate",
        "agent.restart_acknowledged",
    ):
        assert loop in {trace_of(span) for span in named(spans, name)}, name
    # The heartbeat that answered the restart keeps its own trace, linked to the loop.
    answered = [s for s in named(spans, "agent.restart_acknowledged") if trace_of(s) == loop]
    assert answered and all(
        link.context.trace_id != answered[0].context.trace_id for link in answered[0].links
    )
    assert answered[0].links
    assert report["facts"]["loss_to_recovery_seconds"] <= report["facts"]["objective_seconds"]
    assert "result: PASS" in out and "remediation verified" in out
    # The fleet is retired afterwards.
    assert not Agent.objects.exclude(state=AgentState.TERMINATED).exists()


@pytest.mark.django_db(transaction=True)
def test_it_fails_when_the_watchdog_is_disabled(tmp_path):
    # A tighter objective than the default: the run waits it out, for stages that never come.
    report, out, error = run_gameday(tmp_path, watchdog="off", objective=8.0)

    assert error is not None
    assert "remediation started" in str(error)
    assert report["passed"] is False
    # The hung agent is back on the wire but stays failed: nobody restarted it.
    missing = {s["key"] for s in report["stages"] if not s["ok"]}
    assert missing == {
        "remediation_started",
        "agent_back",
        "alert_resolved",
        "remediation_verified",
    }
    assert "result: FAIL" in out
    # It was heartbeating again after its outage, yet left FAILED only when retired.
    victim = Agent.objects.get(pk=report["facts"]["victim"])
    silent = victim.last_heartbeat_at - datetime.fromisoformat(report["facts"]["fault_at"])
    assert silent.total_seconds() > report["facts"]["failed_after_seconds"]
    left_failed = victim.transitions.filter(from_state=AgentState.FAILED)
    assert list(left_failed.values_list("to_state", flat=True)) == [AgentState.TERMINATED]


@pytest.mark.django_db(transaction=True)
def test_it_fails_when_recovery_misses_its_objective(tmp_path):
    report, _, error = run_gameday(tmp_path, objective=5.5)

    assert error is not None
    assert any("exceeds 5.5s" in f for f in report["failures"])


def test_it_refuses_nonsense_options():
    with pytest.raises(CommandError, match="--agents"):
        call_command("gameday", agents=0)
