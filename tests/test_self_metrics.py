"""The console's own health as metrics in monitoring, and the default rules that watch them."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.cache import cache

from alerting import evaluator
from alerting.delivery import record_delivery_failure
from alerting.models import Alert, AlertRule, AlertStatus
from alerting.tasks import evaluate_rules
from alerting.transports import TransportError
from monitoring import rollups
from monitoring.models import MetricRollup, MetricSeries
from observability import liveness, self_metrics
from omoi_console.celery import app as celery_app
from omoi_console.models import Event, EventStatus
from omoi_console.top.schedule import PERIODIC_JOBS
from omoi_console.top.self_watch import record_console_metrics

T0 = datetime(2026, 3, 2, 9, 0, 10, tzinfo=UTC)


@pytest.fixture
def clean_readings(settings):
    settings.LIVENESS_STALE_SECONDS = 7
    keys = [self_metrics._key(name) for name in self_metrics.READINGS]
    keys += [liveness._key(p) for p in (liveness.WORKER, liveness.BEAT, liveness.TICKER)]
    cache.delete_many(keys)
    yield
    cache.delete_many(keys)


def waiting(occurred_at: datetime) -> Event:
    """An outbox event that no handler has processed yet."""
    return Event.objects.create(
        name="monitor.agent.recovered", payload={}, occurred_at=occurred_at, dispatch_after=T0
    )


def at(moment: datetime):
    return time_machine.travel(moment, tick=False)


def stored(metric: str, **labels) -> float:
    """The value recorded for ``metric`` in the minute of T0, once rolled up."""
    series = MetricSeries.objects.get(metric=metric, labels={"console": "omoi-console", **labels})
    (row,) = MetricRollup.objects.filter(series=series)
    return row.max


@pytest.mark.django_db
def test_it_records_the_consoles_health_as_its_own_metrics(clean_readings):
    celery_app.conf.task_always_eager = False  # production: worker and beat (restored after)
    waiting(T0 - timedelta(seconds=42))
    with at(T0 - timedelta(seconds=42)):
        liveness.record_alive(liveness.WORKER)
    with at(T0 - timedelta(seconds=2)):
        liveness.record_alive(liveness.BEAT)
    self_metrics.note_rule_evaluation(0.25)
    for _ in range(3):
        self_metrics.count_notification_failure()

    with at(T0):
        assert record_console_metrics() == 5
    with at(T0 + timedelta(minutes=2)):
        rollups.roll_up()

    assert stored("console_event_bus_lag_seconds") == pytest.approx(42)
    assert stored("console_rule_evaluation_seconds") == 0.25
    assert stored("console_notification_failures_total") == 3
    assert stored("console_process_age_seconds", process="worker") == pytest.approx(42)
    assert stored("console_process_age_seconds", process="beat") == pytest.approx(2)


@pytest.mark.django_db
def test_it_records_no_lag_when_every_event_is_processed(clean_readings):
    event = waiting(T0 - timedelta(seconds=42))
    Event.objects.filter(pk=event.pk).update(status=EventStatus.PROCESSED)

    with at(T0):
        # Embedded, no ticker running and no readings yet: the lag alone.
        assert record_console_metrics() == 1
    with at(T0 + timedelta(minutes=2)):
        rollups.roll_up()

    assert stored("console_event_bus_lag_seconds") == 0


@pytest.mark.django_db
def test_the_places_that_know_note_their_readings(clean_readings, monkeypatch, seeded):
    monkeypatch.setattr(evaluator, "evaluate_due", lambda: 0)
    evaluate_rules()
    assert 0 <= self_metrics.readings()["rule_evaluation_seconds"] < 1

    notification = _notification()
    record_delivery_failure(notification, TransportError("receiver down"))
    record_delivery_failure(notification, TransportError("still down"))
    assert self_metrics.readings()["notification_failures"] == 2


def _notification():
    from alerting.models import Notification, Receiver

    rule = AlertRule.objects.get(name="console-event-bus-lagging")
    alert = Alert.objects.create(
        rule=rule, fingerprint="f" * 32, labels={}, status=AlertStatus.FIRING, started_at=T0
    )
    receiver = Receiver.objects.get(name="console")
    return Notification.objects.create(
        alert=alert, kind="firing", receiver=receiver, channel="console", attempts=1
    )


@pytest.mark.django_db
def test_the_default_rule_fires_when_a_console_process_goes_stale(clean_readings, seeded):
    celery_app.conf.task_always_eager = False
    with at(T0 - timedelta(seconds=45)):
        liveness.record_alive(liveness.WORKER)
    with at(T0):
        liveness.record_alive(liveness.BEAT)
        record_console_metrics()
    # Inside the rule's two-minute window, once the sample's minute is rolled up.
    later = T0 + timedelta(seconds=100)
    rule = AlertRule.objects.get(name="console-process-stale")

    with at(later):
        rollups.roll_up()
        evaluator.evaluate_rule(rule, later)

    rule.refresh_from_db()
    assert rule.last_error == ""
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.status == AlertStatus.FIRING
    assert alert.labels["process"] == "worker"
    assert "worker" in alert.summary and rule.annotations["runbook_url"].endswith(
        "console-process-stale.md"
    )


def test_it_is_a_periodic_job_of_beat_and_of_the_ticker():
    (job,) = [job for job in PERIODIC_JOBS if job.name == "record the console's metrics"]
    assert job.embedded and job.every_seconds == 15.0
