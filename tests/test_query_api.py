"""The read endpoints: shapes, filters, pagination, permissions and refusals."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from monitoring import samples
from monitoring.models import (
    Agent,
    AgentState,
    MetricSeries,
    MonitorAnomaly,
    Severity,
)
from tests.conftest import bearer

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def viewer(make_operator):
    return bearer(make_operator("viewer")[1])


@pytest.fixture
def fleet_samples(db, frozen):
    """queue_depth of three agents, one sample per 10 s over the last 10 minutes."""
    batch = []
    for number, agent in enumerate(["w1", "w2", "w3"]):
        for queue in ("builds", "reviews"):
            for offset in range(0, 600, 10):
                batch.append(
                    {
                        "name": "queue_depth",
                        "labels": {"agent": agent, "queue": queue},
                        "ts": NOW.timestamp() - 600 + offset,
                        "value": float(number * 10 + offset // 60),
                    }
                )
    samples.ingest(batch, now=NOW)


def test_it_lists_series_by_metric_agent_and_labels(api, viewer, fleet_samples):
    listed = api.get("/api/v1/metrics/series?metric=queue_depth&agent=w2", **viewer).json()
    assert listed["count"] == 2
    assert {row["agent_id"] for row in listed["results"]} == {"w2"}
    assert set(listed["results"][0]) == {"id", "metric", "labels", "agent_id", "created_at"}

    matched = api.get("/api/v1/metrics/series?label=queue:builds&label=agent:w3", **viewer).json()
    assert [row["labels"] for row in matched["results"]] == [{"agent": "w3", "queue": "builds"}]
    assert api.get("/api/v1/metrics/series?label=queue:none", **viewer).json()["count"] == 0


def test_it_takes_label_names_literally(api, viewer, fleet_samples):
    for name in ("contains", "isnull", "a__b", "exact", "in", "has_key", "a.b", "a-b"):
        response = api.get(f"/api/v1/metrics/series?label={name}:x", **viewer)
        assert response.status_code == 200, (name, response.content)
        assert response.json()["count"] == 0


@pytest.mark.parametrize(
    "query",
    [
        "metric=no_such_metric",
        "agent=Not%20An%20Agent",
        "label=nocolon",
        "label=:value",
        "label=" + "&label=".join(f"a{i}:b" for i in range(9)),
        "limit=0",
        "offset=-1",
    ],
)
def test_it_refuses_bad_series_filters(api, viewer, db, query):
    problem = assert_problem(api.get(f"/api/v1/metrics/series?{query}", **viewer), 422)
    assert problem["errors"]


def test_it_lists_metrics_with_their_series_counts(api, viewer, fleet_samples):
    listed = api.get("/api/v1/metrics?limit=500", **viewer).json()

    by_name = {row["name"]: row for row in listed["results"]}
    assert by_name["queue_depth"]["series"] == 6
    assert by_name["error_rate"]["series"] == 0
    assert by_name["queue_depth"]["unit"] == "tasks"


def test_it_answers_a_range_query_paginated_over_series(api, viewer, fleet_samples):
    start, end = int(NOW.timestamp()) - 600, int(NOW.timestamp())
    url = (
        f"/api/v1/metrics/query?metric=queue_depth&label=queue:builds"
        f"&start={start}&end={end}&step=300&agg=max&limit=2"
    )

    answer = api.get(url, **viewer).json()

    assert answer["metric"] == "queue_depth" and answer["agg"] == "max"
    assert (answer["step"], answer["start"], answer["end"]) == (300, start, end)
    assert answer["source"] == "raw"
    assert answer["count"] == 3 and answer["next"] and answer["previous"] is None
    rest = api.get(answer["next"], **viewer).json()
    assert rest["previous"] and rest["next"] is None
    pages = answer["series"] + rest["series"]
    assert [one["id"] for one in pages] == sorted(one["id"] for one in pages)
    by_agent = {one["labels"]["agent"]: one for one in pages}
    assert by_agent["w1"]["labels"] == {"agent": "w1", "queue": "builds"}
    assert by_agent["w1"]["points"] == [[start, 4.0], [start + 300, 9.0]]
    assert by_agent["w3"]["points"] == [[start, 24.0], [start + 300, 29.0]]
    assert len(by_agent) == 3


def test_it_takes_iso_times_with_a_zone(api, viewer, fleet_samples):
    url = (
        "/api/v1/metrics/query?metric=queue_depth&agent=w1&agg=count&step=600"
        "&start=2026-11-20T12:50:00%2B01:00&end=2026-11-20T12:00:00Z"
    )

    answer = api.get(url, **viewer).json()

    assert [one["points"] for one in answer["series"]] == [
        [[NOW.timestamp() - 600, 60.0]],
        [[NOW.timestamp() - 600, 60.0]],
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "metric"),
        ("metric=nope", "metric"),
        ("metric=queue_depth&agg=median", "agg"),
        ("metric=queue_depth&step=0", "step"),
        ("metric=queue_depth&step=abc", "step"),
        ("metric=queue_depth&step=99999999999999999999", "step"),
        ("metric=queue_depth&start=yesterday", "start"),
        ("metric=queue_depth&start=2026-11-20T10:00:00", "start"),
        ("metric=queue_depth&start=0001-01-01T00:00:00%2B01:00", "start"),
        ("metric=queue_depth&end=9999-12-31T23:59:59-01:00", "end"),
        ("metric=queue_depth&end=99999999999", "end"),
        ("metric=queue_depth&start=1795000000&end=1794000000", "end"),
        ("metric=queue_depth&start=1700000000&end=1795000000&step=86400", "start"),
        ("metric=queue_depth&start=1795000000&end=1795086400&step=1", "step"),
        ("metric=queue_depth&label=bad", "label"),
        ("metric=queue_depth&limit=51", "limit"),
    ],
)
def test_it_names_the_parameter_a_query_cannot_use(api, viewer, db, frozen, query, field):
    problem = assert_problem(api.get(f"/api/v1/metrics/query?{query}", **viewer), 422)

    assert field in {error["field"] for error in problem["errors"]}


def test_it_refuses_a_query_that_would_read_too_much(api, viewer, fleet_samples, monkeypatch):
    from monitoring import query_engine

    monkeypatch.setattr(query_engine, "MAX_RAW_SAMPLES", 50)

    problem = assert_problem(
        api.get("/api/v1/metrics/query?metric=queue_depth&agg=avg", **viewer), 422
    )

    assert "raw samples" in problem["detail"]


def test_it_ranks_agents(api, viewer, fleet_samples):
    answer = api.get("/api/v1/metrics/top?metric=queue_depth&agg=max&window=600&k=2", **viewer)

    assert answer.json() == {
        "metric": "queue_depth",
        "agg": "max",
        "window": 600,
        "source": "raw",
        "results": [{"agent": "w3", "value": 29.0}, {"agent": "w2", "value": 19.0}],
    }
    lowest = api.get(
        "/api/v1/metrics/top?metric=queue_depth&agg=avg&window=600&k=1&order=asc", **viewer
    )
    assert lowest.json()["results"] == [{"agent": "w1", "value": 4.5}]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("agg=max", "metric"),
        ("metric=queue_depth&window=0", "window"),
        ("metric=queue_depth&window=86401", "window"),
        ("metric=queue_depth&k=0", "k"),
        ("metric=queue_depth&k=101", "k"),
        ("metric=queue_depth&order=sideways", "order"),
        ("metric=queue_depth&agg=p42", "agg"),
    ],
)
def test_it_refuses_bad_top_parameters(api, viewer, db, query, field):
    problem = assert_problem(api.get(f"/api/v1/metrics/top?{query}", **viewer), 422)
    assert field in {error["field"] for error in problem["errors"]}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/metrics",
        "/api/v1/metrics/series",
        "/api/v1/metrics/query?metric=queue_depth",
        "/api/v1/metrics/top?metric=queue_depth",
        "/api/v1/anomalies",
        "/api/v1/anomalies/summary",
        "/api/v1/fleet/summary",
    ],
)
def test_it_serves_reads_to_operators_only(api, registered_agent, make_operator, path):
    _, agent_token = registered_agent
    assert_problem(api.get(path), 401)
    assert_problem(api.get(path, **bearer(agent_token)), 403)
    user, token = make_operator("viewer")
    assert api.get(path, **bearer(token)).status_code == 200
    user.groups.clear()
    assert_problem(api.get(path, **bearer(token)), 403)


def anomaly(series, *, agent="w1", severity=Severity.WARNING, started, ended=None, **fields):
    return MonitorAnomaly.objects.create(
        series=series,
        metric=series.metric,
        agent_id=agent,
        started_at=started,
        ended_at=ended,
        peak_score=fields.pop("peak_score", 4.2),
        direction=fields.pop("direction", "up"),
        detector=fields.pop("detector", "ewma"),
        severity=severity,
        explanation={"expected_low": 1.0, "expected_high": 3.0, "observed": 9.0},
        **fields,
    )


@pytest.fixture
def anomalies(fleet_samples):
    w1, w2 = (MetricSeries.objects.filter(agent_id=agent).first() for agent in ("w1", "w2"))
    hour = timedelta(hours=1)
    return {
        "open": anomaly(w1, started=NOW - hour, severity=Severity.CRITICAL),
        "recent": anomaly(w2, agent="w2", started=NOW - 3 * hour, ended=NOW - 2 * hour),
        "old": anomaly(w1, started=NOW - 30 * hour, ended=NOW - 29 * hour, detector="other"),
    }


def test_it_lists_anomalies_with_filters(api, viewer, anomalies):
    def ids(query):
        response = api.get(f"/api/v1/anomalies?{query}", **viewer)
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    every = [anomalies[name].id for name in ("open", "recent", "old")]
    assert ids("") == every
    assert ids("open=true") == [anomalies["open"].id]
    assert ids("open=false") == every[1:]
    assert ids("agent=w2") == [anomalies["recent"].id]
    assert ids("severity=critical") == [anomalies["open"].id]
    assert ids("detector=other") == [anomalies["old"].id]
    since = (NOW - timedelta(hours=2, minutes=30)).isoformat().replace("+", "%2B")
    assert ids(f"since={since}") == every[:2]
    until = (NOW - timedelta(hours=2)).isoformat().replace("+", "%2B")
    assert ids(f"until={until}") == every[1:]
    row = api.get(f"/api/v1/anomalies/{anomalies['open'].id}", **viewer).json()
    assert row["explanation"] == {"expected_low": 1.0, "expected_high": 3.0, "observed": 9.0}
    assert row["ended_at"] is None and row["direction"] == "up"


@pytest.mark.parametrize(
    "query",
    ["severity=fatal", "direction=sideways", "open=maybe", "since=later", "series=1.5", "series=x"],
)
def test_it_refuses_bad_anomaly_filters(api, viewer, db, query):
    assert_problem(api.get(f"/api/v1/anomalies?{query}", **viewer), 422)


def test_it_answers_404_for_anomalies_that_are_not_there(api, viewer, db):
    assert_problem(api.get("/api/v1/anomalies/999999", **viewer), 404)
    assert_problem(api.get("/api/v1/anomalies/99999999999999999999999", **viewer), 404)


def test_it_summarises_anomalies_of_a_window(api, viewer, anomalies):
    day = api.get("/api/v1/anomalies/summary?window=86400", **viewer).json()

    assert day == {
        "window": 86400,
        "total": 2,
        "by_metric": {"queue_depth": 2},
        "by_agent": {"w1": 1, "w2": 1},
        "by_severity": {"info": 0, "warning": 1, "error": 0, "critical": 1},
    }
    # The open anomaly started an hour ago but counts in a shorter window too.
    minute = api.get("/api/v1/anomalies/summary?window=60", **viewer).json()
    assert (minute["total"], minute["by_agent"]) == (1, {"w1": 1})
    for bad in ("0", "-5", "x", str(91 * 86400)):
        assert_problem(api.get(f"/api/v1/anomalies/summary?window={bad}", **viewer), 422)


def test_it_summarises_the_fleet(api, viewer, db):
    states = [
        AgentState.IDLE,
        AgentState.RUNNING,
        AgentState.RUNNING,
        AgentState.FAILED,
        AgentState.TERMINATED,
    ]
    for number, state in enumerate(states):
        role = "monitor" if number == 0 else "worker"
        Agent.objects.create(id=f"a{number}", role=role, state=state)

    summary = api.get("/api/v1/fleet/summary", **viewer).json()

    assert summary["agents"] == 5
    assert summary["by_state"]["running"] == 2 and summary["by_state"]["terminated"] == 1
    assert summary["by_state"]["degraded"] == 0
    assert summary["by_role"] == {"worker": 4, "monitor": 1, "scheduler": 0}
    assert summary["availability"] == pytest.approx(3 / 4)


def test_it_says_availability_is_unknown_without_live_agents(api, viewer, db):
    Agent.objects.create(id="gone", role="worker", state=AgentState.TERMINATED)

    summary = api.get("/api/v1/fleet/summary", **viewer).json()

    assert summary["availability"] is None and summary["agents"] == 1


GARBAGE = [
    "",
    "-1",
    "1e309",
    "NaN",
    "inf",
    "x" * 3000,
    "\u0663",
    "1.5",
    "9" * 30,
    "2026-13-45T00:00:00Z",
    "%00",
    "a:b:c",
]
READS = {
    "/api/v1/metrics": ["limit", "offset"],
    "/api/v1/metrics/series": ["metric", "agent", "label", "limit"],
    "/api/v1/metrics/query?metric=queue_depth": [
        "start",
        "end",
        "step",
        "agg",
        "label",
        "agent",
        "limit",
        "offset",
    ],
    "/api/v1/metrics/top?metric=queue_depth": ["agg", "window", "k", "order"],
    "/api/v1/anomalies": ["metric", "agent", "series", "open", "since", "until", "detector"],
    "/api/v1/anomalies/summary": ["window"],
}


@pytest.mark.parametrize("path", list(READS))
def test_it_answers_garbage_parameters_with_a_client_error(api, viewer, fleet_samples, path):
    joiner = "&" if "?" in path else "?"
    for name in READS[path]:
        for value in GARBAGE:
            response = api.get(f"{path}{joiner}{name}={value}", **viewer)
            assert response.status_code in (200, 400, 422), (name, value, response.content)
