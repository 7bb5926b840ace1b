from datetime import UTC, datetime, timedelta

import pytest

from monitoring.models import Agent, AgentRole
from omoi_console.foundation import bulk

AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def fleet(size: int) -> list[Agent]:
    return Agent.objects.bulk_create(
        [Agent(id=f"bulk-{n}", name=f"bulk {n}", role=AgentRole.WORKER) for n in range(size)]
    )


@pytest.mark.django_db
def test_it_sets_each_row_to_its_own_values_and_leaves_the_others_alone():
    first, second, untouched = fleet(3)

    changed = bulk.update_rows(
        Agent,
        ["task_progress", "last_heartbeat_at", "current_task"],
        [(first.pk, 0.25, AT, "t-1"), (second.pk, None, AT + timedelta(seconds=5), "")],
    )

    assert changed == 2
    rows = {
        a.pk: (a.task_progress, a.last_heartbeat_at, a.current_task) for a in Agent.objects.all()
    }
    assert rows == {
        first.pk: (0.25, AT, "t-1"),
        second.pk: (None, AT + timedelta(seconds=5), ""),
        untouched.pk: (None, None, ""),
    }


@pytest.mark.django_db
def test_it_updates_more_rows_than_one_statement_holds(monkeypatch):
    monkeypatch.setattr(bulk, "SQLITE_CHUNK", 2)
    agents = fleet(5)

    changed = bulk.update_rows(
        Agent, ["task_progress"], [(a.pk, n / 10) for n, a in enumerate(agents)]
    )

    assert changed == 5
    assert dict(Agent.objects.values_list("pk", "task_progress")) == {
        a.pk: n / 10 for n, a in enumerate(agents)
    }
    assert bulk.update_rows(Agent, ["task_progress"], []) == 0


@pytest.mark.django_db
def test_it_sets_one_value_on_more_rows_than_sqlite_takes_parameters_and_no_others():
    agents = fleet(1200)
    chosen = [agent.pk for agent in agents[:1100]]

    assert bulk.update_ids(Agent, chosen, current_task="t-9") == 1100

    tasks = dict(Agent.objects.values_list("pk", "current_task"))
    assert {pk for pk, task in tasks.items() if task == "t-9"} == set(chosen)
    assert bulk.update_ids(Agent, [], current_task="t-0") == 0
