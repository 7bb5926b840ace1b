"""The dead man's switch: a ping outside while the console is healthy, and only then."""

import pytest
from django.core.cache import cache

from observability import liveness
from omoi_console.celery import app as celery_app
from omoi_console.top.deadman import ping_deadman_switch
from omoi_console.top.schedule import PERIODIC_JOBS
from tests.conftest import captured_log, free_port
from tests.delivery_receivers import Answer, HttpReceiver

SECRET_PATH = "/ping/5f0c2d6e-secret-uuid"


@pytest.fixture
def receiver(settings):
    settings.DEADMAN_INTERVAL_SECONDS = 60
    settings.DEADMAN_METHOD = "post"
    cache.delete(f"{settings.CHANNELS_PREFIX}:deadman:sent")
    with HttpReceiver() as receiver:
        settings.DEADMAN_URL = receiver.url + SECRET_PATH
        yield receiver
    cache.delete(f"{settings.CHANNELS_PREFIX}:deadman:sent")


@pytest.mark.django_db
def test_it_pings_the_configured_url_when_the_console_is_healthy(receiver, settings):
    settings.DEADMAN_METHOD = "get"

    assert ping_deadman_switch().result(timeout=10) is True

    (request,) = receiver.requests
    assert request.path == SECRET_PATH


@pytest.mark.django_db
def test_it_pings_once_per_interval_however_often_the_job_runs(receiver):
    first = ping_deadman_switch()
    assert ping_deadman_switch() is None
    assert ping_deadman_switch() is None

    assert first.result(timeout=10) is True
    assert len(receiver.requests) == 1


@pytest.mark.django_db
def test_it_stays_silent_while_the_worker_is_down(receiver, settings):
    settings.LIVENESS_STALE_SECONDS = 7
    celery_app.conf.task_always_eager = False  # restored by the eager_celery fixture
    cache.delete(liveness._key(liveness.WORKER))
    liveness.record_alive(liveness.BEAT)
    lines = []

    with captured_log(lines):
        sent = ping_deadman_switch()

    assert sent is None and receiver.requests == []
    (line,) = [line for line in lines if line["event"] == "deadman.withheld"]
    assert line["down"] == ["worker"] and line["level"] == "warning"


@pytest.mark.django_db
def test_it_is_off_without_a_url(receiver, settings):
    settings.DEADMAN_URL = ""
    assert ping_deadman_switch() is None
    assert receiver.requests == []


@pytest.mark.django_db
def test_it_warns_of_a_refused_ping_without_the_urls_secret_parts(receiver, settings):
    receiver.answers = [Answer(status=503)]
    host, port = receiver.server.server_address[:2]
    settings.DEADMAN_URL = f"http://ops:pa55@{host}:{port}{SECRET_PATH}?token=t0k3n"
    lines = []

    with captured_log(lines):
        assert ping_deadman_switch().result(timeout=10) is False

    (line,) = [line for line in lines if line["event"] == "deadman.ping_failed"]
    assert line["level"] == "warning" and line["status"] == 503
    assert line["host"] == f"http://{host}:{port}"
    text = repr(lines)
    assert "secret-uuid" not in text and "t0k3n" not in text and "pa55" not in text


@pytest.mark.django_db
def test_it_warns_of_an_unreachable_receiver(receiver, settings):
    settings.DEADMAN_URL = f"http://127.0.0.1:{free_port()}{SECRET_PATH}"
    lines = []

    with captured_log(lines):
        assert ping_deadman_switch().result(timeout=10) is False

    (line,) = [line for line in lines if line["event"] == "deadman.ping_failed"]
    assert line["error"] == "ConnectError" and "secret-uuid" not in repr(lines)


def test_it_is_a_periodic_job_of_beat_and_of_the_ticker():
    (job,) = [job for job in PERIODIC_JOBS if job.task == "omoi_console.top.tasks.ping_deadman"]
    assert job.embedded and job.every_seconds <= 10
