"""The agents' client against scripted answers (httpx.MockTransport): retries, the buffer,
and the parsing of read endpoints whose console side is built alongside."""

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import time_machine

from omoi_client import (
    ApiError,
    AsyncOmoiClient,
    BatchRejected,
    ConnectionFailed,
    RequestRejected,
    RetryPolicy,
    Unavailable,
    UnexpectedResponse,
)
from omoi_client.retrying import retry_after_seconds
from tests.client_fakes import FakeTime, eventually, sent_samples
from tests.conftest import captured_log

BASE = "http://console.test"
TOKEN = "omoi_ag_0123456789ab_" + "s" * 43
STORED = {"stored": 1, "series_created": 0, "duplicate": False}


class Console:
    """Answers from a script: each entry is a status, (status, headers, body) or an exception."""

    def __init__(self, *script, then=200):
        self.script = list(script)
        self.then = then
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if self.script else self.then
        if isinstance(step, Exception):
            raise step
        status, headers, body = step if isinstance(step, tuple) else (step, {}, None)
        if body is None:
            body = STORED if status == 200 else {"status": status, "detail": f"said {status}"}
        return httpx.Response(status, json=body, headers=headers)


def client_with(console, fake: FakeTime | None = None, **options) -> AsyncOmoiClient:
    fake = fake or FakeTime()
    options.setdefault("background", False)
    return AsyncOmoiClient(
        BASE,
        TOKEN,
        transport=httpx.MockTransport(console),
        clock=fake.clock,
        sleep=fake.sleep,
        **options,
    )


def run(coroutine):
    return asyncio.run(coroutine)


async def flush_and_close(client):
    try:
        return await client.flush()
    finally:
        await client.aclose()


# -- retries ---------------------------------------------------------------------------


def test_it_backs_off_with_full_jitter_in_a_doubling_window_up_to_the_attempts():
    console = Console(then=httpx.ConnectError("refused"))
    fake = FakeTime()
    policy = RetryPolicy(attempts=5, base=0.5, cap=3.0, budget=1000)
    client = client_with(console, fake, retry=policy)
    client.record("queue_depth", 1, ts=1_700_000_000)

    with pytest.raises(ConnectionFailed) as failed:
        run(client.flush())

    assert len(console.requests) == 5 and len(fake.slept) == 4
    windows = [min(3.0, 0.5 * 2**n) for n in range(4)]  # 0.5, 1, 2, 3 (capped)
    assert all(0 <= slept <= window for slept, window in zip(fake.slept, windows, strict=True))
    assert client.counters.retried == 4 and client.buffered == 1
    assert TOKEN not in str(failed.value) and failed.value.__cause__ is None


def test_it_draws_each_wait_at_random_within_its_window():
    waits = []
    for _ in range(40):
        fake = FakeTime()
        client = client_with(
            Console(httpx.ConnectTimeout("slow")), fake, retry=RetryPolicy(base=8, cap=8)
        )
        client.record("queue_depth", 1, ts=1_700_000_000)
        run(flush_and_close(client))
        waits.append(fake.slept[0])
    # Full jitter: spread over the whole window, not bunched at its end.
    assert min(waits) < 4 < max(waits) <= 8
    assert len(set(waits)) > 30


def test_it_stops_before_a_wait_that_would_end_past_the_time_budget():
    console = Console((503, {"Retry-After": "100"}, None))
    fake = FakeTime()
    client = client_with(console, fake, retry=RetryPolicy(budget=60))
    client.record("queue_depth", 1, ts=1_700_000_000)

    with pytest.raises(Unavailable) as unavailable:
        run(client.flush())

    assert unavailable.value.status == 503 and unavailable.value.retry_after == 100
    assert fake.slept == [] and len(console.requests) == 1


def test_it_counts_its_own_waits_against_the_budget():
    console = Console(then=(429, {"Retry-After": "20"}, None))
    fake = FakeTime()
    client = client_with(console, fake, retry=RetryPolicy(attempts=10, budget=50))

    with pytest.raises(Unavailable):
        run(client.heartbeat("worker-01", "running"))

    assert fake.slept == [20.0, 20.0]  # a third wait would end at 60 s
    assert len(console.requests) == 3


def test_it_honours_retry_after_given_as_an_http_date():
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    header = format_datetime(when + timedelta(seconds=7), usegmt=True)
    console = Console((503, {"Retry-After": header}, None))
    fake = FakeTime()
    client = client_with(console, fake)
    client.record("queue_depth", 1, ts=1_700_000_000)

    with time_machine.travel(when, tick=False):
        run(flush_and_close(client))

    assert fake.slept == [7.0]
    assert len(console.requests) == 2


def test_it_reads_retry_after_in_both_forms_and_ignores_nonsense():
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 3 ", now) == 3.0
    assert retry_after_seconds("Sun, 01 Mar 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Sun, 01 Mar 2026 11:00:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds("-5", now) is None
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("²", now) is None
    assert retry_after_seconds(None, now) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_it_does_not_retry_other_client_errors(status):
    console = Console(status)
    fake = FakeTime()
    client = client_with(console, fake)

    with pytest.raises(ApiError) as refused:
        run(client.heartbeat("worker-01", "running"))

    assert refused.value.status == status and refused.value.detail == f"said {status}"
    assert len(console.requests) == 1 and fake.slept == []


def test_it_does_not_retry_a_request_that_could_not_be_made():
    console = Console(httpx.LocalProtocolError("illegal header value"))
    fake = FakeTime()

    with pytest.raises(ConnectionFailed):
        run(client_with(console, fake).heartbeat("worker-01", "running"))

    assert len(console.requests) == 1 and fake.slept == []


def test_it_raises_the_problems_of_a_refused_heartbeat():
    body = {
        "status": 422,
        "detail": "Invalid fields: state",
        "errors": [{"field": "state", "detail": '"dancing" is not a valid choice.'}],
    }
    client = client_with(Console((422, {}, body)))

    with pytest.raises(RequestRejected) as refused:
        run(client.heartbeat("worker-01", "dancing"))

    assert [(p.index, p.field) for p in refused.value.problems] == [(None, "state")]
    assert not isinstance(refused.value, BatchRejected)


def test_it_keeps_a_keep_alive_reset_from_losing_a_heartbeat():
    reply = {"agent_id": "w.1", "state": "running", "heartbeat_interval_seconds": 5, "commands": []}
    console = Console(httpx.RemoteProtocolError("closed"), (200, {}, reply))
    client = client_with(console)

    answer = run(client.heartbeat("w.1", "running", current_task="t-1", progress=0.5, acks=[3]))

    assert answer.state == "running" and answer.commands == ()
    sent = [json.loads(request.content) for request in console.requests]
    assert sent == [{"state": "running", "task_id": "t-1", "progress": 0.5, "acks": [3]}] * 2
    assert console.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


# -- the buffer ------------------------------------------------------------------------


def test_it_keeps_the_batch_it_cut_whole_and_drops_the_oldest_waiting_samples():
    console = Console(httpx.ConnectError("down"), then=200)
    client = client_with(console, batch_size=3, buffer_limit=6, retry=RetryPolicy(attempts=1))
    for value in range(4):
        client.record("queue_depth", value, ts=1_700_000_000 + value)
    with pytest.raises(ConnectionFailed):
        run(client.flush())  # the batch 0-2 is cut and kept with its key
    for value in range(4, 10):
        client.record("queue_depth", value, ts=1_700_000_000 + value)

    run(flush_and_close(client))

    batches = [[s["value"] for s in sent_samples(r)] for r in console.requests]
    assert batches == [[0, 1, 2], [0, 1, 2], [7, 8, 9]]
    keys = [r.headers["idempotency-key"] for r in console.requests]
    assert keys[0] == keys[1] != keys[2]
    assert client.counters.dropped == 4 and client.counters.sent == 6


def test_it_sends_again_after_a_failed_round_without_losing_samples():
    """The background sender rests after spending its retries, then tries again."""
    console = Console(*[httpx.ConnectError("down")] * 2, then=200)
    fake = FakeTime(auto=False)

    async def scenario():
        client = client_with(
            console, fake, background=True, batch_size=2, retry=RetryPolicy(attempts=1, cap=30)
        )
        client.record("queue_depth", 1, ts=1_700_000_000)
        client.record("queue_depth", 2, ts=1_700_000_001)
        await eventually(lambda: len(console.requests) == 1)
        fake.advance(30)
        await eventually(lambda: len(console.requests) == 2)
        fake.advance(30)
        await eventually(lambda: client.counters.sent == 2)
        await client.aclose()
        return client

    run(scenario())

    assert [len(sent_samples(r)) for r in console.requests] == [2, 2, 2]
    assert len({r.headers["idempotency-key"] for r in console.requests}) == 1
    assert fake.slept == [30, 30]


def test_it_drops_the_batch_on_422_and_keeps_sending_the_rest_in_the_background():
    problems = {
        "status": 422,
        "detail": "1 problem",
        "errors": [{"index": 0, "field": "name", "detail": "Unknown metric"}],
    }
    console = Console((422, {}, problems), then=200)

    async def scenario():
        client = client_with(console, background=True, batch_size=1)
        client.record("bogus", 1, ts=1_700_000_000)
        client.record("queue_depth", 2, ts=1_700_000_000)
        await eventually(lambda: client.counters.sent == 1)
        await client.aclose()
        return client

    client = run(scenario())

    assert len(console.requests) == 2
    assert client.counters.rejected == 1 and client.buffered == 0
    assert client.last_rejection.problems[0].field == "name"


def test_it_counts_what_it_could_not_send_at_close_as_dropped():
    console = Console(then=httpx.ConnectError("down"))
    lines = []
    client = client_with(console, retry=RetryPolicy(attempts=2))
    for value in range(3):
        client.record("queue_depth", value, ts=1_700_000_000 + value)

    with captured_log(lines):
        run(client.aclose())

    assert client.counters.dropped == 3 and client.buffered == 0
    assert [
        line["samples"] for line in lines if line["event"] == "client.closed_with_unsent_samples"
    ] == [3]
    assert TOKEN not in json.dumps(lines)


def test_it_refuses_samples_it_could_never_store():
    client = client_with(Console())
    with pytest.raises(ValueError):
        client.record("queue_depth", math.nan)
    with pytest.raises(ValueError):
        client.record("queue_depth", 1, ts=datetime(2026, 1, 1))  # no zone
    with pytest.raises(TypeError):
        client.record("queue_depth", "12")
    with pytest.raises(TypeError):
        client.record("queue_depth", True)
    assert client.buffered == 0


def test_it_sends_times_and_labels_as_the_ingest_api_reads_them():
    console = Console()
    client = client_with(console)
    client.record("queue_depth", 4, {"queue": "q1"}, ts=datetime(2026, 1, 1, tzinfo=UTC))

    run(flush_and_close(client))

    (request,) = console.requests
    assert sent_samples(request) == [
        {"name": "queue_depth", "labels": {"queue": "q1"}, "ts": 1767225600.0, "value": 4}
    ]
    assert request.headers["content-type"] == "application/json"
    assert "content-encoding" not in request.headers


def test_it_never_shows_the_token():
    client = client_with(Console())
    assert TOKEN not in repr(client) and TOKEN not in str(vars(client.counters))


# -- reads -----------------------------------------------------------------------------


def test_it_merges_query_pages_and_sends_repeated_label_filters():
    page = {
        "metric": "task_latency_seconds",
        "agg": "p95",
        "step": 60,
        "start": "2026-01-01T00:00:00Z",
        "end": 1767229200,
        "source": "rollup",
    }
    first = {
        **page,
        "next": "http://elsewhere.test/api/v1/metrics/query?offset=1&limit=1",
        "series": [{"id": 1, "labels": {"agent": "a"}, "points": [[1767225600, 1.5]]}],
    }
    second = {**page, "next": None, "series": [{"id": 2, "labels": {"agent": "b"}, "points": []}]}
    console = Console((200, {}, first), (200, {}, second))
    client = client_with(console)

    result = run(
        client.query(
            "task_latency_seconds",
            start=datetime(2026, 1, 1, tzinfo=UTC),
            end=1767229200,
            step=60,
            agg="p95",
            labels={"agent": "a", "task_kind": "build"},
        )
    )

    assert result.source == "rollup" and result.step == 60.0 and result.agg == "p95"
    assert result.start == datetime(2026, 1, 1, tzinfo=UTC)
    assert result.end == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert [(s.id, s.labels, s.points) for s in result.series] == [
        (1, {"agent": "a"}, ((1767225600.0, 1.5),)),
        (2, {"agent": "b"}, ()),
    ]
    params = console.requests[0].url.params
    assert params.get_list("label") == ["agent:a", "task_kind:build"]
    assert params["start"] == "2026-01-01T00:00:00+00:00" and params["end"] == "1767229200"
    # The next page is asked of this console, whatever host the link names.
    assert console.requests[1].url.host == "console.test"
    assert dict(console.requests[1].url.params) == {"offset": "1", "limit": "1"}


def test_it_lists_series_across_pages():
    def series(number):
        return {
            "id": number,
            "metric": "queue_depth",
            "labels": {"agent": "a", "queue": f"q{number}"},
            "agent_id": "a",
            "created_at": "2026-01-01T00:00:00+00:00",
        }

    pages = [
        {
            "count": 3,
            "next": f"{BASE}/api/v1/metrics/series?limit=2&offset=2",
            "previous": None,
            "results": [series(1), series(2)],
        },
        {"count": 3, "next": None, "previous": None, "results": [series(3)]},
    ]
    console = Console(*[(200, {}, page) for page in pages])

    found = run(client_with(console).series("queue_depth", agent="a", labels={"queue": "q1"}))

    assert [s.id for s in found] == [1, 2, 3]
    assert found[0].created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert console.requests[0].url.params.multi_items() == [
        ("metric", "queue_depth"),
        ("agent", "a"),
        ("label", "queue:q1"),
    ]


def test_it_parses_top_and_the_summaries():
    top = {
        "metric": "error_rate",
        "agg": "max",
        "window": 300,
        "results": [{"agent": "a", "value": 0.5}, {"agent": "b", "value": 0.25}],
    }
    anomalies = {
        "window": 3600,
        "total": 3,
        "by_metric": {"error_rate": 3},
        "by_agent": {"a": 2, "b": 1},
        "by_severity": {"warning": 3},
    }
    fleet = {
        "agents": 4,
        "by_state": {"running": 3, "failed": 1},
        "by_role": {"worker": 4},
        "availability": 0.75,
    }
    console = Console((200, {}, top), (200, {}, anomalies), (200, {}, fleet))
    client = client_with(console)

    async def scenario():
        return (
            await client.top("error_rate", agg="max", window=300, k=2, order="desc"),
            await client.anomaly_summary(window=3600),
            await client.fleet_summary(),
        )

    ranked, summary, fleet_now = run(scenario())

    assert [(e.agent, e.value) for e in ranked.results] == [("a", 0.5), ("b", 0.25)]
    assert summary.total == 3 and summary.by_agent == {"a": 2, "b": 1}
    assert fleet_now.availability == 0.75 and fleet_now.by_state["failed"] == 1
    paths = [(r.url.path, dict(r.url.params)) for r in console.requests]
    assert paths == [
        (
            "/api/v1/metrics/top",
            {"metric": "error_rate", "agg": "max", "window": "300", "k": "2", "order": "desc"},
        ),
        ("/api/v1/anomalies/summary", {"window": "3600"}),
        ("/api/v1/fleet/summary", {}),
    ]


def test_it_names_an_answer_it_cannot_read():
    console = Console((200, {}, {"agents": "many"}))
    with pytest.raises(UnexpectedResponse):
        run(client_with(console).fleet_summary())
