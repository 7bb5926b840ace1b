"""Metric batches in: stored whole or not at all, every refusal with its reason.

Every API test runs three ways: DRF's test client, over HTTP through Django's
path (the agent's token not cached), and over HTTP through the lean batch path
(the token cached, as for any agent that heartbeats); all three must agree.
"""

import gzip
import json
import time
from datetime import UTC, datetime

import pytest
from django.db import OperationalError
from rest_framework.test import APIClient

from monitoring import samples
from monitoring.ingest.asgi import answered
from monitoring.ingest.cache import ingest_cache
from monitoring.models import IngestBatch, MetricSample, MetricSeries
from omoi_console import asgi
from tests.conftest import ServedClient, bearer

URL = "/api/v1/metrics/ingest"


@pytest.fixture(params=["in-process", "served-django", "served-lean"])
def api(request, registered_agent):
    if request.param == "in-process":
        return APIClient()
    # These tests send many refused batches in a row: not what the rate limit is about.
    settings = request.getfixturevalue("settings")
    settings.RATE_LIMIT_PER_TOKEN = "1000/second"
    if request.param == "served-django":
        # The lean path takes any agent token it can verify: with none cached
        # and the verifier refusing, every batch goes Django's way.
        request.getfixturevalue("monkeypatch").setattr(
            "monitoring.ingest.runtime.verify_agent_token", lambda raw, agent_id: False
        )
        ingest_cache.clear()  # registration cached the token; forget it
    client = ServedClient(request.getfixturevalue("server").base_url)
    asgi.ingest_limits.configure()
    client.lean = request.param == "served-lean"
    return client


def send(api, body, token, **headers):
    raw = body if isinstance(body, bytes | str) else json.dumps(body)
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return api.post(URL, data=raw, content_type="application/json", **bearer(token), **extra)


def sample(value=1.0, ts=None, **labels):
    return {
        "name": "queue_depth",
        "labels": {"queue": "inbox", **labels},
        "ts": time.time() - 10 if ts is None else ts,
        "value": value,
    }


def assert_problem(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


def stored_values():
    return sorted(MetricSample.objects.values_list("value", flat=True))


@pytest.mark.django_db(transaction=True)
def test_it_stores_a_batch_whole_and_names_the_agent_on_its_series(api, registered_agent):
    agent, token = registered_agent
    lean_before = answered["lean_batches"]
    now = time.time()
    batch = [sample(float(n), ts=now - n) for n in range(5)] + [
        {"name": "lock_wait_seconds", "labels": {"lock": "repo"}, "ts": now, "value": 0.25},
        sample(7.0, ts=datetime.fromtimestamp(now - 30, UTC).isoformat(), queue="outbox"),
    ]

    response = send(api, {"samples": batch}, token)

    assert response.status_code == 200, response.content
    assert response.json() == {"stored": 7, "series_created": 3, "duplicate": False}
    assert stored_values() == [0.0, 0.25, 1.0, 2.0, 3.0, 4.0, 7.0]
    series = {
        (s.metric, s.labels["queue" if "queue" in s.labels else "lock"]): s
        for s in (MetricSeries.objects.all())
    }
    assert set(series) == {
        ("queue_depth", "inbox"),
        ("queue_depth", "outbox"),
        ("lock_wait_seconds", "repo"),
    }
    assert all(s.labels["agent"] == agent.id and s.agent_id == agent.id for s in series.values())
    assert answered["lean_batches"] - lean_before == (1 if getattr(api, "lean", False) else 0)
    # A second batch of the same series creates none.
    again = send(api, {"samples": [sample(9.0, ts=now - 100)]}, token)
    assert again.json() == {"stored": 1, "series_created": 0, "duplicate": False}


BAD_SAMPLES = [
    ({"name": "no_such_metric", "ts": 1, "value": 1}, "name", "Unknown metric"),
    (sample(zone="a"), "labels", "has no label 'zone'"),
    (sample(value=True), "value", "number"),
    (sample(value="12"), "value", "number"),
    (sample(value=1e999), "value", "finite"),
    (sample(ts=0), "ts", "retention"),
    (sample(ts=time.time() + 3600), "ts", "future"),
    (sample(ts="yesterday"), "ts", "ISO 8601"),
    (sample(ts="2026-11-25T10:00:00"), "ts", "ISO 8601"),
    ({**sample(), "unit": "s"}, "unit", "Unknown field"),
    ({**sample(), "labels": ["queue"]}, "labels", "object"),
    (sample(queue=3), "labels.queue", "text"),
    (sample(queue="x\u0000y"), "labels.queue", "storable"),
    (sample(queue="x" * 201), "labels.queue", "200"),
    (sample(agent="worker-99"), "labels.agent", "about itself"),
    (
        {"name": "agent_availability", "labels": {"role": "worker"}, "ts": 1, "value": 1},
        "name",
        "computed by the console",
    ),
    ("not an object", "", "object"),
]


@pytest.mark.django_db(transaction=True)
def test_it_refuses_the_whole_batch_and_says_why_the_sample_is_bad(api, registered_agent):
    _, token = registered_agent
    good = [sample(1.0, ts=time.time() - 5), sample(2.0, ts=time.time() - 6)]
    answers = []
    for bad, _, _ in BAD_SAMPLES:
        response = send(api, {"samples": [good[0], bad, good[1]]}, token)
        errors = assert_problem(response, 422)["errors"]
        answers.append([(e["index"], e["field"], e["detail"]) for e in errors])

    for (_, field, reason), errors in zip(BAD_SAMPLES, answers, strict=True):
        assert len(errors) == 1 and errors[0][:2] == (1, field), (reason, errors)
        assert reason in errors[0][2], (reason, errors)
    assert not MetricSample.objects.exists()
    assert not MetricSeries.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_lists_every_bad_sample_and_refuses_nan_written_by_lenient_encoders(
    api, registered_agent
):
    _, token = registered_agent
    now = time.time()
    # Python's own encoder writes NaN unless told not to.
    batch = [sample(1.0, ts=now), sample(float("nan"), ts=now - 1), sample(2.0, ts=now)]
    raw = json.dumps({"samples": batch})
    assert "NaN" in raw

    body = assert_problem(send(api, raw, token), 422)

    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "value"), (2, "ts")]
    assert "Same series and timestamp as sample 0" in body["errors"][1]["detail"]
    assert not MetricSample.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"samples": []}, 422),
        ({"samples": {"name": "queue_depth"}}, 422),
        ({"samples": [], "extra": 1}, 422),
        ([sample()], 422),
        ("{not json", 400),
        ('{"samples": [], "samples": []}', 422),
    ],
)
def test_it_refuses_a_body_that_is_not_a_batch(api, registered_agent, body, status):
    _, token = registered_agent
    assert_problem(send(api, body, token), status)
    assert not MetricSample.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_refuses_more_samples_than_a_batch_may_hold(api, registered_agent, settings):
    _, token = registered_agent
    settings.METRIC_MAX_SAMPLES_PER_BATCH = 3
    batch = [sample(float(n), ts=time.time() - n) for n in range(4)]
    body = assert_problem(send(api, {"samples": batch}, token), 422)
    assert "At most 3 samples" in body["errors"][0]["detail"]


@pytest.mark.django_db(transaction=True)
def test_it_caps_the_series_a_metric_may_have(api, registered_agent, settings):
    _, token = registered_agent
    settings.METRIC_MAX_SERIES_PER_METRIC = 3
    now = time.time()
    first = [sample(1.0, ts=now, queue=f"q{n}") for n in range(2)]
    assert send(api, {"samples": first}, token).status_code == 200

    over = [sample(1.0, ts=now - 1, queue=f"q{n}") for n in range(4)]
    body = assert_problem(send(api, {"samples": over}, token), 422)

    assert "cap of 3" in body["errors"][0]["detail"]
    assert MetricSeries.objects.count() == 2 and MetricSample.objects.count() == 2
    # Known series and one more still go in.
    within = [sample(2.0, ts=now - 2, queue=f"q{n}") for n in range(3)]
    assert send(api, {"samples": within}, token).json()["series_created"] == 1


@pytest.mark.django_db(transaction=True)
def test_it_stores_a_batch_once_under_its_idempotency_key(api, registered_agent):
    _, token = registered_agent
    batch = {"samples": [sample(1.0), sample(2.0, queue="outbox")]}

    first = send(api, batch, token, **{"Idempotency-Key": "batch-0001"})
    again = send(api, batch, token, **{"Idempotency-Key": "batch-0001"})
    other = send(api, batch, token, **{"Idempotency-Key": "batch-0002"})

    assert first.json()["stored"] == 2 and not first.json()["duplicate"]
    assert again.json() == {"stored": 0, "series_created": 0, "duplicate": True}
    assert other.json()["stored"] == 2
    assert MetricSample.objects.count() == 4
    assert IngestBatch.objects.get(key="batch-0001").samples == 2


@pytest.mark.django_db(transaction=True)
def test_it_forgets_the_key_of_a_refused_batch(api, registered_agent):
    _, token = registered_agent
    key = {"Idempotency-Key": "batch-0003"}
    assert send(api, {"samples": [sample(value="x")]}, token, **key).status_code == 422
    assert send(api, {"samples": [sample()]}, token, **key).json()["stored"] == 1


@pytest.mark.django_db(transaction=True)
def test_it_takes_gzip_and_refuses_broken_or_explosive_gzip(api, registered_agent, settings):
    _, token = registered_agent
    body = json.dumps({"samples": [sample(3.0)]}).encode()

    assert send(api, gzip.compress(body), token, **{"Content-Encoding": "gzip"}).status_code == 200
    assert stored_values() == [3.0]

    assert_problem(send(api, body, token, **{"Content-Encoding": "gzip"}), 400)
    assert_problem(send(api, gzip.compress(body)[:-9], token, **{"Content-Encoding": "gzip"}), 400)
    settings.METRIC_MAX_DECOMPRESSED_BYTES = 10_000
    bomb = gzip.compress(b" " * 50_000 + body)
    assert len(bomb) < 1000
    assert_problem(send(api, bomb, token, **{"Content-Encoding": "gzip"}), 413)
    assert_problem(send(api, body, token, **{"Content-Encoding": "br"}), 415)
    assert stored_values() == [3.0]


@pytest.mark.django_db(transaction=True)
def test_it_answers_503_with_retry_after_when_the_database_is_away(
    api, registered_agent, monkeypatch
):
    _, token = registered_agent

    def unavailable(*args):
        raise OperationalError("connection to server at 127.0.0.1 failed")

    monkeypatch.setattr(samples, "_write", unavailable)
    response = send(api, {"samples": [sample()]}, token)

    assert_problem(response, 503)
    assert int(response["Retry-After"]) >= 1
    assert "127.0.0.1" not in response.content.decode()
    assert not MetricSeries.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_refuses_requests_without_the_right_credentials(api, registered_agent, make_operator):
    _, viewer = make_operator("viewer")
    _, admin = make_operator("admin")
    batch = {"samples": [sample(agent="worker-01")]}

    assert_problem(send(api, batch, "omoi_ag_notatoken.nope"), 401)
    assert_problem(send(api, batch, viewer), 403)
    assert not MetricSample.objects.exists()
    # An operator allowed to ingest speaks for any agent, so names it.
    assert send(api, batch, admin).json()["stored"] == 1
    assert MetricSeries.objects.get().agent_id == "worker-01"


@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_body_over_the_batch_bound_before_reading_it(
    server, registered_agent, settings
):
    _, token = registered_agent
    settings.REQUEST_BODY_LIMITS = {URL: 2000}
    client = ServedClient(server.base_url)
    batch = {"samples": [sample(float(n), ts=time.time() - n) for n in range(40)]}
    assert len(json.dumps(batch)) > 2000

    assert_problem(send(client, batch, token), 413)
    assert not MetricSample.objects.exists()


def test_it_serves_the_catalogue(api_client_for_catalogue):
    response = api_client_for_catalogue.get("/api/v1/metrics/catalog")
    assert response.status_code == 200
    names = {spec["name"]: spec for spec in response.json()}
    assert {"task_latency_seconds", "queue_depth", "lock_wait_seconds", "agent_availability"} <= (
        set(names)
    )
    assert names["queue_depth"]["labels"] == ["agent", "queue"]
    assert names["queue_depth"]["max_series"] > 0


@pytest.fixture
def api_client_for_catalogue(db, make_operator):
    _, viewer = make_operator("viewer")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {viewer}")
    return client


@pytest.mark.django_db(transaction=True)
def test_it_verifies_a_token_it_has_not_seen_and_refuses_a_revoked_one(server, registered_agent):
    agent, token = registered_agent
    client = ServedClient(server.base_url)
    ingest_cache.clear()  # as after a restart of the serving process
    lean_before = answered["lean_batches"]

    assert send(client, {"samples": [sample()]}, token).status_code == 200
    assert answered["lean_batches"] == lean_before + 1

    agent.tokens.get().revoke()
    assert_problem(send(client, {"samples": [sample(2.0)]}, token), 401)
    assert stored_values() == [1.0]
