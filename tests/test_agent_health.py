"""Composite agent health: components, weights, streaks, events, scale, API and admin."""

import hashlib
import math
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from monitoring.health import anomalous_agents, evaluate_health
from monitoring.models import Agent, AgentHealth, AgentState, MetricSeries, SeriesDetector
from omoi_console.models import Event
from omoi_console.top.schedule import PERIODIC_JOBS
from tests.conftest import bearer
from tests.test_settings import load_settings

S = AgentState
ANOMALOUS = "monitor.agent.health_anomalous"
RECOVERED = "monitor.agent.health_recovered"


def make_agents(count: int, prefix: str = "w", **fields) -> list[Agent]:
    fields.setdefault("state", S.RUNNING)
    fields.setdefault("role", "worker")
    return Agent.objects.bulk_create(Agent(id=f"{prefix}-{n:04d}", **fields) for n in range(count))


def make_agent(agent_id: str = "w-1", **fields) -> Agent:
    fields.setdefault("state", S.RUNNING)
    fields.setdefault("role", "worker")
    return Agent.objects.create(id=agent_id, **fields)


def signal(agent_id, metric, *, score=0.0, value=0.0, minute=None, labels=None):
    """A detector's last word on one series of ``agent_id``."""
    labels = {"agent": agent_id, **(labels or {})}
    fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:32]
    series, _ = MetricSeries.objects.get_or_create(
        metric=metric, fingerprint=fingerprint, defaults={"labels": labels, "agent_id": agent_id}
    )
    detector, _ = SeriesDetector.objects.update_or_create(
        series=series,
        defaults={
            "config": "test",
            "state": {},
            "minute": minute or timezone.now().replace(second=0, microsecond=0),
            "value": value,
            "score": score,
        },
    )
    return detector


def health(agent_id: str = "w-1") -> AgentHealth:
    return AgentHealth.objects.get(agent_id=agent_id)


def events(name: str):
    return Event.objects.filter(name=name).order_by("occurred_at")


def sick(agent_id: str = "w-1") -> None:
    """Signals worth 0.85 with the default weights: latency 1, errors 1, heartbeat 1."""
    signal(agent_id, "task_latency_seconds", score=1.0)
    signal(agent_id, "error_rate", value=1.0)
    Agent.objects.filter(pk=agent_id).update(missed_heartbeats=3)


def heal(agent_id: str = "w-1") -> None:
    SeriesDetector.objects.filter(series__agent_id=agent_id).update(score=0.0, value=0.0)
    Agent.objects.filter(pk=agent_id).update(missed_heartbeats=0)


@pytest.fixture
def clock():
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        yield traveller


# --- components -----------------------------------------------------------------


@pytest.mark.django_db
def test_it_takes_latency_from_the_highest_score_of_the_agents_own_series(clock):
    make_agent("w-1")
    make_agent("w-2")
    signal("w-1", "task_latency_seconds", score=0.3, labels={"task_kind": "review"})
    signal("w-1", "task_latency_seconds", score=0.6, labels={"task_kind": "build"})
    signal("w-2", "task_latency_seconds", score=0.9)

    evaluate_health()

    assert health("w-1").components["latency"] == 0.6
    assert health("w-2").components["latency"] == 0.9


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("rate", "rate_score", "failures_score", "errors"),
    [
        (0.5, 0.1, 0.0, 0.5),  # the error rate itself
        (0.1, 0.7, 0.0, 0.7),  # its detector found it unusual
        (0.1, 0.0, 0.8, 0.8),  # failures are up
        (1.7, 0.0, 0.0, 1.0),  # a bad reading is clipped to the ratio's range
        (0.0, 0.0, 0.0, 0.0),
    ],
)
def test_it_takes_errors_from_the_worst_of_rate_and_failures(
    clock, rate, rate_score, failures_score, errors
):
    make_agent()
    signal("w-1", "error_rate", value=rate, score=rate_score)
    signal("w-1", "task_failures_total", value=3, score=failures_score)

    evaluate_health()

    assert health().components["errors"] == errors


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("state", "missed", "component"),
    [
        (S.RUNNING, 0, 0.0),
        (S.DEGRADED, 1, 0.3333),
        (S.DEGRADED, 2, 0.6667),
        (S.FAILED, 3, 1.0),
        (S.FAILED, 9, 1.0),
        (S.FAILED, 0, 1.0),  # reported failed by the agent itself
    ],
)
def test_it_counts_missed_heartbeats_against_the_three_that_fail_an_agent(
    clock, state, missed, component
):
    make_agent(state=state, missed_heartbeats=missed)

    evaluate_health()

    assert health().components["heartbeat"] == component


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("skew", "skew_score", "component"),
    [(-15.0, 0.0, 0.5), (30.0, 0.0, 1.0), (45.0, 0.2, 1.0), (1.5, 0.9, 0.9)],
)
def test_it_counts_clock_skew_against_the_largest_tolerated(clock, skew, skew_score, component):
    make_agent()
    signal("w-1", "clock_skew_seconds", value=skew, score=skew_score)

    evaluate_health()

    assert health().components["heartbeat"] == component


@pytest.mark.django_db
def test_it_takes_the_largest_tolerated_skew_from_settings(clock, settings):
    settings.HEALTH_MAX_CLOCK_SKEW_SECONDS = 10.0
    make_agent()
    signal("w-1", "clock_skew_seconds", value=5.0)

    evaluate_health()

    assert health().components["heartbeat"] == 0.5


@pytest.mark.django_db
def test_it_counts_a_stuck_agent_as_fully_blocked_and_others_by_lock_waits(clock):
    make_agent("w-1", state=S.STUCK)
    make_agent("w-2")
    signal("w-2", "lock_wait_seconds", score=0.4, labels={"lock": "repo"})

    evaluate_health()

    assert health("w-1").components["blocked"] == 1.0
    assert health("w-2").components["blocked"] == 0.4


@pytest.mark.django_db
def test_it_ignores_a_series_whose_detector_has_gone_quiet(clock, settings):
    make_agent()
    old = timezone.now() - timedelta(seconds=settings.HEALTH_SIGNAL_MAX_AGE_SECONDS + 60)
    signal("w-1", "error_rate", value=0.9, minute=old)

    evaluate_health()

    assert health().components["errors"] == 0.0


# --- the score ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("component", "weight"),
    [("latency", 0.35), ("errors", 0.30), ("heartbeat", 0.20), ("blocked", 0.15)],
)
def test_it_weighs_each_component_by_its_default_weight(clock, component, weight):
    make_agent(state=S.STUCK if component == "blocked" else S.RUNNING)
    if component == "latency":
        signal("w-1", "task_latency_seconds", score=1.0)
    elif component == "errors":
        signal("w-1", "error_rate", value=1.0)
    elif component == "heartbeat":
        Agent.objects.update(missed_heartbeats=3)

    evaluate_health()

    assert health().score == weight
    assert health().components[component] == 1.0


@pytest.mark.django_db
def test_it_takes_the_weights_from_settings(clock, settings):
    settings.HEALTH_WEIGHTS = {"latency": 1.0, "errors": 0.0, "heartbeat": 0.0, "blocked": 3.0}
    make_agent()
    signal("w-1", "task_latency_seconds", score=0.6)
    signal("w-1", "error_rate", value=1.0)  # weighs nothing
    signal("w-1", "lock_wait_seconds", score=0.2)

    evaluate_health()

    assert health().score == pytest.approx((0.6 + 3 * 0.2) / 4)


# --- streaks and events -----------------------------------------------------------


@pytest.mark.django_db
def test_it_flags_an_agent_only_after_three_evaluations_in_a_row_at_the_threshold(clock):
    make_agent()
    sick()

    for streak in (1, 2):
        evaluate_health()
        assert (health().score, health().streak, health().anomalous) == (0.85, streak, False)
        clock.shift(15)
    assert not events(ANOMALOUS).exists()

    evaluate_health()
    assert (health().streak, health().anomalous) == (3, True)
    assert health().anomalous_since == timezone.now()
    event = events(ANOMALOUS).get()
    assert event.payload == {
        "agent_id": "w-1",
        "role": "worker",
        "score": 0.85,
        "components": {"latency": 1.0, "errors": 1.0, "heartbeat": 1.0, "blocked": 0.0},
    }

    clock.shift(15)
    evaluate_health()  # still anomalous: nothing new to say
    assert health().streak == 4
    assert events(ANOMALOUS).count() == 1
    assert list(anomalous_agents().values_list("agent_id", flat=True)) == ["w-1"]


@pytest.mark.django_db
def test_it_counts_a_score_of_exactly_the_threshold(clock, settings):
    settings.HEALTH_CONSECUTIVE = 1
    make_agent(state=S.STUCK)
    signal("w-1", "task_latency_seconds", score=1.0)
    signal("w-1", "error_rate", value=1.0)  # 0.35 + 0.30 + 0.15 = 0.80

    evaluate_health()

    assert health().score == 0.8
    assert health().anomalous


@pytest.mark.django_db
def test_it_starts_the_streak_again_after_one_evaluation_below(clock):
    make_agent()
    sick()
    evaluate_health()
    evaluate_health()
    assert health().streak == 2

    heal()
    evaluate_health()
    assert (health().streak, health().anomalous) == (0, False)

    sick()
    evaluate_health()
    evaluate_health()
    assert (health().streak, health().anomalous) == (2, False)
    evaluate_health()
    assert health().anomalous
    assert events(ANOMALOUS).count() == 1
    assert not events(RECOVERED).exists()


@pytest.mark.django_db
def test_it_publishes_one_recovery_with_how_long_the_agent_was_anomalous(clock):
    make_agent()
    sick()
    for _ in range(3):
        evaluate_health()
        clock.shift(15)
    flagged_at = health().anomalous_since
    clock.shift(30)

    heal()
    evaluate_health()
    evaluate_health()

    assert (health().anomalous, health().anomalous_since, health().streak) == (False, None, 0)
    event = events(RECOVERED).get()
    assert event.payload == {
        "agent_id": "w-1",
        "role": "worker",
        "score": 0.0,
        "anomalous_seconds": (timezone.now() - flagged_at).total_seconds(),
    }
    assert event.payload["anomalous_seconds"] == 45.0
    assert not anomalous_agents().exists()


@pytest.mark.django_db
def test_it_takes_threshold_and_streak_length_from_settings(clock, settings):
    settings.HEALTH_THRESHOLD = 0.3
    settings.HEALTH_CONSECUTIVE = 1
    make_agent()
    signal("w-1", "task_latency_seconds", score=1.0)  # 0.35

    evaluate_health()

    assert health().anomalous
    assert events(ANOMALOUS).count() == 1


@pytest.mark.django_db
def test_it_leaves_quarantined_and_terminated_agents_out(clock, settings):
    settings.HEALTH_CONSECUTIVE = 1
    make_agent("w-1")
    make_agent("w-2", state=S.QUARANTINED)
    make_agent("w-3", state=S.TERMINATED)
    for agent_id in ("w-1", "w-2", "w-3"):
        sick(agent_id)

    evaluate_health()
    assert list(AgentHealth.objects.values_list("agent_id", flat=True)) == ["w-1"]
    assert health("w-1").anomalous

    Agent.objects.filter(pk="w-1").update(state=S.QUARANTINED)
    evaluate_health()
    # Taken out on purpose: the stretch ends, but nothing recovered.
    assert (health("w-1").anomalous, health("w-1").streak) == (False, 0)
    assert not events(RECOVERED).exists()
    assert not anomalous_agents().exists()


@pytest.mark.django_db
def test_it_writes_only_the_rows_that_changed(clock):
    make_agents(3)
    signal("w-0000", "lock_wait_seconds", score=0.5)
    evaluate_health()
    first = {row.agent_id: row.evaluated_at for row in AgentHealth.objects.all()}
    clock.shift(15)

    with CaptureQueriesContext(connection) as unchanged:
        result = evaluate_health()
    assert (result.agents, result.written) == (3, 0)
    assert not [q for q in unchanged if q["sql"].startswith(("INSERT", "UPDATE monitor_agent"))]

    SeriesDetector.objects.update(score=0.7)
    result = evaluate_health()
    assert (result.agents, result.written) == (3, 1)
    later = {row.agent_id: row.evaluated_at for row in AgentHealth.objects.all()}
    assert later["w-0000"] == timezone.now()
    assert later["w-0001"] == first["w-0001"]


# --- scale ------------------------------------------------------------------------


def statements_for(size: int, prefix: str, clock) -> tuple[int, int]:
    """Statements of a first evaluation of ``size`` agents, every third one sick and
    flagged at once, and of a second in which they all recover."""
    make_agents(size, prefix)
    agents = [f"{prefix}-{n:04d}" for n in range(size)]
    for agent_id in agents[::3]:
        signal(agent_id, "task_latency_seconds", score=1.0)
        signal(agent_id, "error_rate", value=1.0)
        signal(agent_id, "clock_skew_seconds", value=40.0)
    clock.shift(15)
    with CaptureQueriesContext(connection) as flagging:
        assert evaluate_health().became_anomalous == len(agents[::3])
    SeriesDetector.objects.filter(series__agent_id__startswith=prefix).update(score=0, value=0)
    clock.shift(15)
    with CaptureQueriesContext(connection) as recovering:
        assert evaluate_health().recovered == len(agents[::3])
    Agent.objects.filter(pk__in=agents).update(state=S.TERMINATED)  # out of the next count
    return len(flagging), len(recovering)


@pytest.mark.django_db
def test_it_spends_as_many_statements_on_a_large_fleet_as_on_a_small_one(clock, settings):
    settings.HEALTH_CONSECUTIVE = 1
    # SQLite binds at most 999 parameters a statement, so Django writes 142 health
    # rows (or 99 events) at a time there: its large fleet stays within one batch.
    large = 200 if connection.vendor == "postgresql" else 90
    small = statements_for(10, "small", clock)
    assert statements_for(large, "large", clock) == small
    assert events(ANOMALOUS).count() == len(range(0, 10, 3)) + len(range(0, large, 3))


@pytest.mark.django_db
def test_it_evaluates_a_steady_fleet_with_reads_alone_whatever_its_size(clock):
    """Agents, detector scores and health rows: three reads (on PostgreSQL two more
    take and release the evaluation's lock)."""

    def statements(size: int, prefix: str) -> list[str]:
        make_agents(size, prefix)
        evaluate_health()
        clock.shift(15)
        with CaptureQueriesContext(connection) as queries:
            assert evaluate_health().agents == size
        Agent.objects.filter(id__startswith=prefix).update(state=S.TERMINATED)
        return [q["sql"].split()[0] for q in queries]

    small = statements(10, "small")
    assert statements(200, "large") == small
    assert set(small) == {"SELECT"}  # no transaction, no write


# --- the periodic job -------------------------------------------------------------


@pytest.mark.django_db
def test_it_is_a_periodic_job_every_fifteen_seconds(clock):
    job = next(job for job in PERIODIC_JOBS if job.name == "evaluate agent health")
    assert job.every_seconds == 15.0
    make_agent(state=S.FAILED)

    import_string(job.task).delay()

    assert health().components["heartbeat"] == 1.0


# --- API --------------------------------------------------------------------------


@pytest.fixture
def viewer(make_operator):
    _, token = make_operator("viewer")
    return bearer(token)


@pytest.fixture
def fleet(clock, seeded):
    make_agent("w-1")
    make_agent("w-2", role="monitor")
    make_agent("w-3", role="monitor", state=S.STUCK)
    make_agent("w-4")  # quarantined while evaluated: no health yet
    sick("w-1")
    signal("w-2", "lock_wait_seconds", score=0.4)
    Agent.objects.filter(pk="w-4").update(state=S.QUARANTINED)
    for _ in range(3):
        evaluate_health()
    Agent.objects.filter(pk="w-4").update(state=S.RUNNING)


@pytest.mark.django_db
def test_it_answers_an_agents_health_with_the_policy_in_force(api, viewer, fleet):
    response = api.get("/api/v1/agents/w-1/health", **viewer)

    assert response.status_code == 200
    body = response.json()
    assert body["agent_id"] == "w-1" and body["role"] == "worker"
    assert (body["score"], body["streak"], body["anomalous"]) == (0.85, 3, True)
    assert body["components"] == {"latency": 1.0, "errors": 1.0, "heartbeat": 1.0, "blocked": 0.0}
    assert body["anomalous_since"] and body["evaluated_at"]
    assert body["policy"] == {
        "weights": {"latency": 0.35, "errors": 0.30, "heartbeat": 0.20, "blocked": 0.15},
        "threshold": 0.8,
        "consecutive": 3,
        "max_clock_skew_seconds": 30.0,
    }


@pytest.mark.django_db
def test_it_answers_404_for_an_agent_unknown_or_not_evaluated_yet(api, viewer, fleet):
    unknown = api.get("/api/v1/agents/nobody/health", **viewer)
    pending = api.get("/api/v1/agents/w-4/health", **viewer)

    assert unknown.status_code == 404
    assert pending.status_code == 404
    assert pending.json()["detail"] == "Agent w-4 has not been evaluated yet."


@pytest.mark.django_db
def test_it_lists_health_worst_first_and_filters_it(api, viewer, fleet):
    def ids(query: str = "") -> list[str]:
        response = api.get(f"/api/v1/agent-health{query}", **viewer)
        assert response.status_code == 200, response.json()
        return [row["agent_id"] for row in response.json()["results"]]

    assert ids() == ["w-1", "w-3", "w-2"]  # 0.85, 0.15 (stuck), 0.06 (lock waits)
    assert ids("?anomalous=true") == ["w-1"]
    assert ids("?anomalous=false") == ["w-3", "w-2"]
    assert ids("?role=monitor") == ["w-3", "w-2"]
    assert ids("?min_score=0.5") == ["w-1"]
    assert ids("?min_score=0&role=worker&anomalous=true") == ["w-1"]
    assert ids("?limit=1&offset=1") == ["w-3"]
    assert api.get("/api/v1/agent-health?limit=1", **viewer).json()["count"] == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("anomalous=maybe", "anomalous"),
        ("role=boss", "role"),
        ("min_score=1.5", "min_score"),
        ("min_score=-0.1", "min_score"),
        ("min_score=high", "min_score"),
        ("min_score=nan", "min_score"),
        ("min_score=inf", "min_score"),
        ("min_score=" + "9" * 400, "min_score"),
        ("limit=0", "limit"),
        ("offset=-1", "offset"),
    ],
)
def test_it_refuses_a_bad_filter_naming_it(api, viewer, fleet, query, field):
    response = api.get(f"/api/v1/agent-health?{query}", **viewer)

    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["detail"]


@pytest.mark.django_db
def test_it_keeps_health_from_callers_who_may_not_read_agents(api, fleet, seeded):
    from monitoring.services import register_agent

    _, agent_token = register_agent("w-9", "worker")
    for path in ("/api/v1/agent-health", "/api/v1/agents/w-1/health"):
        assert api.get(path).status_code == 401
        assert api.get(path, **bearer(agent_token)).status_code == 403


# --- admin ------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_shows_health_in_the_admin_without_letting_anyone_edit_it(client, make_operator, fleet):
    user, _ = make_operator("admin")
    client.force_login(user)

    def url(view, *args):
        return reverse(f"admin:monitoring_agenthealth_{view}", args=args)

    listing = client.get(url("changelist"))
    page = client.get(url("change", "w-1"))

    assert listing.status_code == 200 and b"w-1" in listing.content
    assert page.status_code == 200 and b"Save" not in page.content
    assert client.post(url("change", "w-1"), {"score": "0"}).status_code == 403
    assert client.get(url("add")).status_code == 403
    assert client.post(url("delete", "w-1"), {"post": "yes"}).status_code == 403
    assert health("w-1").score == 0.85


# --- settings ---------------------------------------------------------------------


def test_it_reads_the_health_settings_from_the_environment(tmp_path):
    show = (
        "settings.HEALTH_WEIGHTS['latency'], settings.HEALTH_WEIGHTS['blocked'], "
        "settings.HEALTH_THRESHOLD, settings.HEALTH_CONSECUTIVE, "
        "settings.HEALTH_MAX_CLOCK_SKEW_SECONDS"
    )
    result = load_settings(
        tmp_path,
        show,
        OMOI_HEALTH_WEIGHT_LATENCY="2",
        OMOI_HEALTH_WEIGHT_BLOCKED="0",
        OMOI_HEALTH_THRESHOLD="0.7",
        OMOI_HEALTH_CONSECUTIVE="5",
        OMOI_HEALTH_MAX_CLOCK_SKEW="10",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2.0", "0.0", "0.7", "5", "10.0"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OMOI_HEALTH_WEIGHT_ERRORS": "-1"}, "OMOI_HEALTH_WEIGHT_LATENCY, _ERRORS"),
        ({"OMOI_HEALTH_WEIGHT_ERRORS": "nan"}, "OMOI_HEALTH_WEIGHT_LATENCY, _ERRORS"),
        (
            {
                "OMOI_HEALTH_WEIGHT_LATENCY": "0",
                "OMOI_HEALTH_WEIGHT_ERRORS": "0",
                "OMOI_HEALTH_WEIGHT_HEARTBEAT": "0",
                "OMOI_HEALTH_WEIGHT_BLOCKED": "0",
            },
            "not all 0",
        ),
        ({"OMOI_HEALTH_THRESHOLD": "0"}, "OMOI_HEALTH_THRESHOLD must be more than 0"),
        ({"OMOI_HEALTH_THRESHOLD": "1.2"}, "OMOI_HEALTH_THRESHOLD must be more than 0"),
        ({"OMOI_HEALTH_CONSECUTIVE": "0"}, "OMOI_HEALTH_CONSECUTIVE must be from 1"),
        ({"OMOI_HEALTH_CONSECUTIVE": "two"}, "OMOI_HEALTH_CONSECUTIVE must be an integer"),
        ({"OMOI_HEALTH_MAX_CLOCK_SKEW": "0"}, "OMOI_HEALTH_MAX_CLOCK_SKEW must be between"),
    ],
)
def test_it_refuses_to_start_with_a_bad_health_setting(tmp_path, env, named):
    result = load_settings(tmp_path, **env)

    assert result.returncode != 0
    assert named in result.stderr


def test_the_default_weights_sum_to_one():
    from django.conf import settings

    assert math.isclose(sum(settings.HEALTH_WEIGHTS.values()), 1.0)
