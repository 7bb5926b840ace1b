"""Anomaly detection over rollups: one anomaly per excursion, state kept between runs."""

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection

from monitoring import catalog, detection, rollups, samples
from monitoring.detectors import get_detector, restore_detector
from monitoring.models import (
    DetectorSetting,
    MetricSeries,
    MonitorAnomaly,
    RollupCursor,
    SeriesDetector,
)
from omoi_console.models import Event
from tests import rollup_rows
from tests.conftest import bearer
from tests.row_locks import held_by_another_worker

START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def make_series(metric="queue_depth", agent="a-1", **labels) -> MetricSeries:
    return rollup_rows.make_series(metric, agent=agent, **(labels or {"queue": "inbox"}))


def write_rollups(series: MetricSeries, values: dict[int, list[float]]) -> None:
    rollup_rows.write_rollups(series, START, values)


def rolled_until(minutes: int) -> None:
    RollupCursor.objects.update_or_create(
        name="samples", defaults={"rolled_until": START + minutes * MINUTE}
    )


def noisy(n: int, *, level=100.0, sd=2.0, seed=3) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(level, sd) for _ in range(n)]


def stored_state(series: MetricSeries) -> dict:
    return json.loads(SeriesDetector.objects.get(series=series).state)


def events(name: str) -> list[dict]:
    return [e.payload for e in Event.objects.filter(name=name).order_by("occurred_at", "id")]


@pytest.fixture(autouse=True)
def backfill_everything(settings):
    settings.DETECTION_BACKFILL_SECONDS = 30 * 86_400


@pytest.mark.django_db
def test_it_opens_one_anomaly_for_a_spike_and_closes_it_when_the_series_is_calm():
    series = make_series()
    values = noisy(300)
    for m in range(200, 206):
        values[m] = 160.0  # six minutes far above a level of 100 +- 2
    write_rollups(series, {m: [v] for m, v in enumerate(values)})
    rolled_until(300)

    assert detection.detect() == 300

    (anomaly,) = MonitorAnomaly.objects.all()
    assert anomaly.started_at == START + 200 * MINUTE
    assert anomaly.direction == "up"
    assert anomaly.ended_at is not None
    # It ends at the first calm minute after the spike, not when the detector let go.
    assert anomaly.ended_at == START + 206 * MINUTE
    assert anomaly.peak_score >= 0.5
    assert anomaly.explanation["observed"] == 160.0
    assert anomaly.explanation["expected_high"] < 160.0
    assert (anomaly.metric, anomaly.agent_id) == ("queue_depth", "a-1")
    (detected,) = events("monitor.anomaly.detected")
    assert detected["anomaly_id"] == anomaly.pk
    assert detected["series"] == "queue_depth{agent=a-1,queue=inbox}"
    assert detected["direction"] == "up"
    (resolved,) = events("monitor.anomaly.resolved")
    assert resolved["anomaly_id"] == anomaly.pk
    assert resolved["duration_seconds"] == 360.0


@pytest.mark.django_db
def test_it_reports_a_drop_to_zero_as_an_anomaly_going_down():
    series = make_series()
    values = noisy(200) + [0.0] * 20
    write_rollups(series, {m: [v] for m, v in enumerate(values)})
    rolled_until(220)

    detection.detect()

    (anomaly,) = MonitorAnomaly.objects.all()
    assert anomaly.direction == "down"
    assert anomaly.started_at == START + 200 * MINUTE
    assert anomaly.ended_at is None  # still at zero: the excursion goes on
    assert SeriesDetector.objects.get(series=series).score == anomaly.peak_score
    assert events("monitor.anomaly.resolved") == []


@pytest.mark.django_db
def test_it_finds_nothing_in_noise():
    series = make_series()
    write_rollups(series, {m: [v] for m, v in enumerate(noisy(400, seed=11))})
    rolled_until(400)

    detection.detect()

    assert not MonitorAnomaly.objects.exists()
    assert SeriesDetector.objects.get(series=series).score < 0.5


@pytest.mark.django_db
def test_it_carries_on_from_the_stored_state_exactly_as_if_it_had_never_stopped():
    series = make_series()
    values = noisy(240)
    values[150] = 150.0
    write_rollups(series, {m: [v] for m, v in enumerate(values)})

    # Many short runs, each restoring the state the last one stored ...
    for until in range(7, 241, 7):
        rolled_until(min(until, 240))
        detection.detect()
    rolled_until(240)
    detection.detect()

    # ... end in the state of one detector fed everything in one go.
    reference = get_detector()
    for m, value in enumerate(values):
        reference.update((START + m * MINUTE).timestamp(), value)
    stored = SeriesDetector.objects.get(series=series)
    assert json.loads(stored.state) == reference.state()
    assert stored.minute == START + 239 * MINUTE
    assert restore_detector(json.loads(stored.state)).state() == reference.state()
    assert MonitorAnomaly.objects.count() == 1


@pytest.mark.django_db
def test_it_feeds_each_minute_once_even_when_it_is_rolled_up_again():
    series = make_series()
    write_rollups(series, {m: [v] for m, v in enumerate(noisy(60))})
    rolled_until(60)
    detection.detect()
    before = SeriesDetector.objects.get(series=series).state

    assert detection.detect() == 0
    # A late sample re-rolls minute 30: detection has moved on and does not feed it again.
    RollupCursor.objects.filter(name="detectors").update(rolled_until=START + 30 * MINUTE)
    detection.detect()

    assert SeriesDetector.objects.get(series=series).state == before


@pytest.mark.django_db
def test_it_starts_a_new_installation_within_the_backfill(settings):
    settings.DETECTION_BACKFILL_SECONDS = 3600
    series = make_series()
    write_rollups(series, {m: [v] for m, v in enumerate(noisy(180))})
    rolled_until(180)

    assert detection.detect() == 60

    assert RollupCursor.objects.get(name="detectors").rolled_until == START + 180 * MINUTE


@pytest.mark.django_db
def test_it_feeds_the_number_the_metric_is_watched_on():
    latency = make_series("task_latency_seconds", task_kind="build")
    # One slow task in each minute: the mean hardly moves, the p95 does.
    minutes = {m: [1.0] * 19 + [1.0 + (m % 3)] for m in range(40)}
    write_rollups(latency, minutes)
    rolled_until(40)

    detection.detect()

    stored = SeriesDetector.objects.get(series=latency)
    assert stored.config.startswith("robust_seasonal/p95/")
    assert stored.value == 1.0 + (39 % 3)  # the p95 of minute 39, not its mean


@pytest.mark.django_db
def test_it_feeds_a_counter_its_growth_and_survives_a_reset():
    counter = make_series("task_failures_total", task_kind="build", reason="timeout")
    totals = [10.0, 12.0, 15.0, 3.0, 4.0]  # the agent restarted before minute 3
    write_rollups(counter, {m: [v] for m, v in enumerate(totals)})
    rolled_until(5)

    detection.detect()

    stored = SeriesDetector.objects.get(series=counter)
    assert stored.previous == 4.0
    assert stored.value == 1.0  # 4 - 3
    state = json.loads(stored.state)
    # Four growths were fed (2, 3, 3 after the reset, 1): the first total is no growth.
    assert state["n"] == 4


@pytest.mark.django_db
def test_it_follows_an_operators_setting_and_starts_afresh_when_it_changes():
    series = make_series()
    write_rollups(series, {m: [v] for m, v in enumerate(noisy(100))})
    rolled_until(50)
    detection.detect()
    assert stored_state(series)["n"] == 50

    DetectorSetting.objects.create(
        metric="queue_depth", detector="robust_seasonal", params={"threshold": 3.0}, on="max"
    )
    rolled_until(100)
    detection.detect()

    stored = SeriesDetector.objects.get(series=series)
    assert stored.config == 'robust_seasonal/max/{"threshold":3.0}'
    assert stored_state(series)["n"] == 50  # a fresh state fed minutes 50 to 99
    assert stored_state(series)["params"]["threshold"] == 3.0


@pytest.mark.django_db
def test_it_leaves_a_metric_alone_when_its_detection_is_turned_off():
    series = make_series()
    write_rollups(series, {m: [v] for m, v in enumerate(noisy(50))})
    rolled_until(50)
    DetectorSetting.objects.create(
        metric="queue_depth", enabled=False, detector="robust_seasonal", on="mean"
    )

    detection.detect()

    assert not SeriesDetector.objects.filter(series=series).exists()
    assert "queue_depth" not in detection.watches()
    assert "error_rate" in detection.watches()


@pytest.mark.django_db
def test_it_keeps_one_open_anomaly_per_series_across_runs():
    series = make_series()
    values = noisy(200) + [170.0] * 40
    write_rollups(series, {m: [v] for m, v in enumerate(values)})
    for until in (205, 210, 225, 240):
        rolled_until(until)
        detection.detect()

    assert MonitorAnomaly.objects.count() == 1
    assert len(events("monitor.anomaly.detected")) == 1


@pytest.mark.django_db
def test_it_ends_the_anomaly_of_a_series_that_stopped_sending(settings):
    settings.DETECTION_STALE_SECONDS = 3600
    quiet, busy = make_series(agent="a-1"), make_series(agent="a-2")
    write_rollups(quiet, {m: [v] for m, v in enumerate(noisy(100) + [0.0] * 5)})
    write_rollups(busy, {m: [v] for m, v in enumerate(noisy(200, seed=8))})
    rolled_until(164)  # the quiet series' last minute (104) is 60 minutes back
    detection.detect()
    assert MonitorAnomaly.objects.get(series=quiet).ended_at is None

    rolled_until(166)
    detection.detect()

    anomaly = MonitorAnomaly.objects.get(series=quiet)
    assert anomaly.ended_at == START + 105 * MINUTE
    assert anomaly.explanation["ended_by"] == "no data"
    assert [e["anomaly_id"] for e in events("monitor.anomaly.resolved")] == [anomaly.pk]
    assert SeriesDetector.objects.get(series=quiet).score == 0.0


@pytest.mark.django_db
def test_it_runs_on_what_ingest_and_the_rollup_job_stored():
    rng = random.Random(5)
    batch = []
    for m in range(90):
        value = 500.0 if m == 80 else rng.gauss(20, 1)
        for second in (5, 35):
            batch.append(
                {
                    "name": "queue_depth",
                    "labels": {"agent": "a-9", "queue": "inbox"},
                    "ts": (START + m * MINUTE + timedelta(seconds=second)).timestamp(),
                    "value": value,
                }
            )
    with time_machine.travel(START + 91 * MINUTE, tick=False):
        samples.ingest(batch)
        rollups.roll_up(max_minutes=200)
        detection.detect()

    (anomaly,) = MonitorAnomaly.objects.all()
    assert anomaly.agent_id == "a-9"
    assert anomaly.started_at == START + 80 * MINUTE
    assert anomaly.explanation["observed"] == 500.0


@pytest.mark.django_db
def test_it_refuses_a_setting_nothing_could_run():
    with pytest.raises(ValidationError) as caught:
        DetectorSetting(metric="no_such_metric", detector="robust_seasonal", on="mean").full_clean()
    assert "metric" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        DetectorSetting(metric="queue_depth", detector="magic", on="mean").full_clean()
    assert "unknown detector" in caught.value.message_dict["detector"][0]
    with pytest.raises(ValidationError) as caught:
        DetectorSetting(
            metric="queue_depth", detector="robust_seasonal", params={"speed": 2}, on="mean"
        ).full_clean()
    assert "params" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        DetectorSetting(
            metric="queue_depth", detector="robust_seasonal", params={"threshold": -1}, on="mean"
        ).full_clean()
    assert "params" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        DetectorSetting(metric="queue_depth", detector="robust_seasonal", on="median").full_clean()
    assert "on" in caught.value.message_dict


@pytest.mark.django_db(transaction=True)
def test_it_leaves_the_minutes_to_the_worker_that_holds_the_cursor():
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    series = make_series()
    write_rollups(series, {m: [v] for m, v in enumerate(noisy(60))})
    rolled_until(60)
    RollupCursor.objects.create(name="detectors", rolled_until=START)

    with held_by_another_worker(RollupCursor.objects.filter(name="detectors")):
        assert detection.detect() == 0
        assert not SeriesDetector.objects.exists()

    assert detection.detect() == 60
    assert stored_state(series)["n"] == 60


@pytest.fixture
def viewer(make_operator):
    return bearer(make_operator("viewer")[1])


@pytest.fixture
def admin_user(make_operator):
    return bearer(make_operator("admin")[1])


@pytest.mark.django_db
def test_it_lists_every_metric_with_the_detection_in_force(api, viewer):
    DetectorSetting.objects.create(
        metric="queue_depth", detector="rolling_p95", params={"window": 100}, on="max"
    )
    DetectorSetting.objects.create(
        metric="error_rate", enabled=False, detector="robust_seasonal", on="mean"
    )

    response = api.get("/api/v1/detection", **viewer)

    assert response.status_code == 200
    by_metric = {row["metric"]: row for row in response.json()}
    assert set(by_metric) == set(catalog.CATALOG)
    assert by_metric["queue_depth"] == {
        "metric": "queue_depth",
        "watched": True,
        "source": "setting",
        "detector": "rolling_p95",
        "params": {"window": 100},
        "on": "max",
        "severity": "warning",
        "default": {
            "on": "mean",
            "detector": "robust_seasonal",
            "params": {},
            "severity": "warning",
        },
    }
    assert by_metric["error_rate"]["source"] == "off"
    assert by_metric["task_latency_seconds"]["on"] == "p95"
    assert by_metric["task_latency_seconds"]["source"] == "catalog"
    assert by_metric["heartbeat_age_seconds"]["watched"] is False


@pytest.mark.django_db
def test_it_sets_and_resets_a_metrics_detection(api, admin_user):
    response = api.put(
        "/api/v1/detection/queue_depth",
        {"params": {"threshold": 3}, "severity": "error"},
        format="json",
        **admin_user,
    )

    assert response.status_code == 200, response.content
    body = response.json()
    # What was left out keeps the catalogue's default.
    assert (body["detector"], body["on"], body["source"]) == ("robust_seasonal", "mean", "setting")
    assert (body["params"], body["severity"]) == ({"threshold": 3}, "error")
    assert detection.watches()["queue_depth"].severity == "error"

    assert api.delete("/api/v1/detection/queue_depth", **admin_user).status_code == 204
    assert not DetectorSetting.objects.exists()
    assert api.get("/api/v1/detection/queue_depth", **admin_user).json()["source"] == "catalog"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [
        ({"detector": "magic"}, "detector"),
        ({"params": {"speed": 2}}, "params"),
        ({"params": {"threshold": "high"}}, "params"),
        ({"params": {"threshold": 0}}, "params"),
        ({"params": [1, 2]}, "params"),
        ({"on": "median"}, "on"),
        ({"severity": "loud"}, "severity"),
        ({"enabled": "maybe"}, "enabled"),
    ],
)
def test_it_refuses_a_bad_setting_and_stores_nothing(api, admin_user, body, field):
    response = api.put("/api/v1/detection/queue_depth", body, format="json", **admin_user)

    assert response.status_code in (400, 422), response.content
    assert field in str(response.json())
    assert not DetectorSetting.objects.exists()


@pytest.mark.django_db
def test_it_answers_not_found_for_a_metric_outside_the_catalogue(api, admin_user):
    assert api.get("/api/v1/detection/no_such_metric", **admin_user).status_code == 404
    assert api.get("/api/v1/detection/Not-A-Name", **admin_user).status_code == 404
    response = api.put(
        "/api/v1/detection/no_such_metric", {"on": "max"}, format="json", **admin_user
    )
    assert response.status_code == 404
    assert not DetectorSetting.objects.exists()


@pytest.mark.django_db
def test_it_lets_viewers_read_detection_but_not_change_it(api, viewer):
    assert api.get("/api/v1/detection/queue_depth", **viewer).status_code == 200
    response = api.put("/api/v1/detection/queue_depth", {"on": "max"}, format="json", **viewer)
    assert response.status_code == 403
    assert api.delete("/api/v1/detection/queue_depth", **viewer).status_code == 403
    assert api.get("/api/v1/detection").status_code in (401, 403)
    assert not DetectorSetting.objects.exists()
