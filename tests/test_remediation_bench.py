"""The remediation bench times the failure it induced, not an earlier one of the same agent."""

from datetime import timedelta
from types import SimpleNamespace

import pytest
import time_machine
from django.utils import timezone

from bench import remediation
from monitoring.models import AgentCommand, AgentState, AgentTransition, CommandKind
from monitoring.services import register_agent


def _failed(agent, at, actor="monitor"):
    AgentTransition.objects.create(
        agent=agent, from_state="degraded", to_state=AgentState.FAILED, actor=actor, at=at
    )


def _restart(agent, at):
    return AgentCommand.objects.create(
        agent=agent, kind=CommandKind.RESTART, reason="r", issued_by="watchdog", created_at=at
    )


@pytest.mark.django_db
def test_it_times_the_induced_failure_not_an_earlier_one():
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        agent, _ = register_agent("silent-000", "worker", heartbeat_interval=1.0)
    # A late heartbeat failed the agent before the bench silenced it; that action did not act.
    _failed(agent, start + timedelta(seconds=1))
    silenced = start + timedelta(seconds=10)
    _failed(agent, silenced + timedelta(seconds=4))
    answer = _restart(agent, silenced + timedelta(seconds=5))
    sim = SimpleNamespace(
        agent=agent, silenced_at_wall=silenced.timestamp(), fail_at_wall=silenced.timestamp()
    )

    failed_at, restarts, unintended = remediation.induced_failures([sim])

    assert failed_at[agent.pk] == silenced + timedelta(seconds=4)
    assert restarts[agent.pk]["id"] == answer.pk
    assert unintended == {"failures": 1, "agents": 1}


@pytest.mark.django_db
def test_it_leaves_out_a_restart_queued_before_the_induced_failure():
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        agent, _ = register_agent("reported-000", "worker", heartbeat_interval=1.0)
    _restart(agent, start + timedelta(seconds=1))
    induced = start + timedelta(seconds=10)
    _failed(agent, induced, actor="agent:reported-000")
    sim = SimpleNamespace(agent=agent, silenced_at_wall=None, fail_at_wall=induced.timestamp())

    failed_at, restarts, unintended = remediation.induced_failures([sim])

    assert failed_at[agent.pk] == induced
    assert agent.pk not in restarts
    assert unintended == {"failures": 0, "agents": 0}
