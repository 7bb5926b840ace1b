"""The console's own processes: a stopped worker, beat or ticker shows in /healthz within 10 s."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.cache import cache

from observability import liveness
from observability.tasks import record_worker_alive
from omoi_console.celery import app as celery_app
from omoi_console.top.beat import LivenessScheduler
from omoi_console.top.schedule import PERIODIC_JOBS
from omoi_console.top.ticker import Ticker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def watched(settings):
    """Liveness checked as in production; no beat left over from another test."""
    settings.LIVENESS_STALE_SECONDS = 7
    keys = [liveness._key(p) for p in (liveness.WORKER, liveness.BEAT, liveness.TICKER)]
    cache.delete_many(keys)
    yield
    liveness.stopped(liveness.TICKER)
    cache.delete_many(keys)


@pytest.fixture
def celery_processes(watched):
    """Celery as production runs it: a worker and beat that must beat."""
    celery_app.conf.task_always_eager = False  # restored by the eager_celery fixture


def answer(settings, **processes) -> dict:
    """What /healthz says when the database (and Redis, if used) answer, with ``processes``."""
    status = "ok" if all(state == "ok" for state in processes.values()) else "error"
    redis = {"redis": "ok"} if settings.REDIS_URL else {}
    return {"status": status, "database": "ok", **redis, **processes}


def at(seconds: float):
    return time_machine.travel(T0 + timedelta(seconds=seconds), tick=False)


@pytest.mark.django_db
def test_it_answers_503_naming_a_stale_worker(client, celery_processes, settings):
    with at(0):
        liveness.record_alive(liveness.WORKER)
        liveness.record_alive(liveness.BEAT)
    with at(6):
        liveness.record_alive(liveness.BEAT)
        assert client.get("/healthz").status_code == 200

    with at(14):
        response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == answer(settings, worker="stale 14s", beat="stale 8s")


@pytest.mark.django_db
def test_it_shows_a_worker_stopped_at_any_moment_within_ten_seconds(client, celery_processes):
    # Beats come every second; the worker stops just after one of them.
    with at(0):
        liveness.record_alive(liveness.WORKER)
    for second in range(1, 11):
        with at(second):
            liveness.record_alive(liveness.BEAT)
            healthy = client.get("/healthz").json()["worker"] == "ok"
        if not healthy:
            break
    assert not healthy and second <= 8


@pytest.mark.django_db
def test_it_names_a_process_that_never_beat(client, celery_processes):
    with at(0):
        liveness.record_alive(liveness.BEAT)
        response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["worker"] == "missing"
    assert response.json()["beat"] == "ok"


@pytest.mark.django_db
def test_it_checks_only_the_ticker_in_the_embedded_mode(client, watched, settings):
    # Eager Celery: no worker or beat to wait for.
    assert client.get("/healthz").json() == answer(settings)
    with at(0):
        liveness.started(liveness.TICKER)
    with at(5):
        assert client.get("/healthz").json()["ticker"] == "ok"

    with at(9):
        response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == answer(settings, ticker="stale 9s")


@pytest.mark.django_db
def test_it_stops_expecting_a_ticker_stopped_on_purpose(client, watched, settings):
    ticker = Ticker()
    ticker.jobs = []
    with at(0):
        ticker.start()
        assert "ticker" in client.get("/healthz").json()
        ticker.stop()

    with at(60):
        assert client.get("/healthz").json() == answer(settings)


@pytest.mark.django_db
def test_it_does_not_check_processes_when_turned_off(client, celery_processes, settings):
    settings.LIVENESS_STALE_SECONDS = 0
    assert client.get("/healthz").status_code == 200


def test_the_worker_task_and_beats_ticks_record_liveness(celery_processes, monkeypatch):
    monkeypatch.setattr("django_celery_beat.schedulers.DatabaseScheduler.tick", lambda self: 1.0)
    scheduler = LivenessScheduler.__new__(LivenessScheduler)  # its database set-up is not ours
    with at(0):
        record_worker_alive.apply()  # as a worker runs it
        assert scheduler.tick() == 1.0

    with at(3):
        assert liveness.ages() == {"worker": 3.0, "beat": 3.0}


def test_beat_schedules_the_worker_liveness_task_every_second_and_the_ticker_does_not():
    (job,) = [job for job in PERIODIC_JOBS if job.task == record_worker_alive.name]
    assert job.every_seconds == 1.0
    assert record_worker_alive not in [task for task, _ in Ticker().jobs]
