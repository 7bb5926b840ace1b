"""The console websocket: authenticated operators only, every event forwarded unless filtered."""

import pytest
import websockets
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from omoi_console.asgi import application
from omoi_console.foundation.events import publish
from omoi_console.top.consumers import CLOSE_UNAUTHENTICATED

# Generous: a loaded machine may take seconds to schedule the consumer; a broken
# feed fails the test all the same, only later.
WAIT = 20
LOST = {"agent_id": "worker-01", "role": "worker", "last_heartbeat_at": None, "missed": 3}


def communicator(token: str | None = None):
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return WebsocketCommunicator(application, "/ws/console/", headers=headers)


async def receive_event(feed, name):
    while True:
        message = await feed.receive_json_from(timeout=WAIT)
        if message["type"] == "event" and message["event"]["name"] == name:
            return message["event"]


async def refused(feed) -> int:
    """The close code of a refused connection, which is accepted only to say why."""
    connected, _ = await feed.connect(timeout=WAIT)
    assert connected
    message = await feed.receive_output(timeout=WAIT)
    assert message["type"] == "websocket.close"
    assert await feed.receive_nothing(timeout=0.1)  # and nothing is forwarded
    return message["code"]


async def _feed_roundtrip(token):
    feed = communicator(token)
    connected, _ = await feed.connect(timeout=WAIT)
    assert connected
    event = await database_sync_to_async(publish)("monitor.agent.heartbeat_lost", LOST)
    received = await receive_event(feed, "monitor.agent.heartbeat_lost")
    await feed.disconnect()
    return event, received


def run(coro):
    import asyncio

    return asyncio.run(coro)


@pytest.mark.django_db(transaction=True)
def test_it_refuses_anonymous_and_bad_tokens():
    assert run(refused(communicator())) == CLOSE_UNAUTHENTICATED
    assert run(refused(communicator("omoi_op_0123456789ab_nope"))) == CLOSE_UNAUTHENTICATED


@pytest.mark.django_db(transaction=True)
def test_it_forwards_events_to_operators(make_operator):
    _, token = make_operator("viewer")
    event, received = run(_feed_roundtrip(token))
    assert received["id"] == str(event.id)
    assert received["payload"]["agent_id"] == "worker-01"
    assert received["trace_id"] == event.trace_id


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_it_forwards_events_through_redis(make_operator, settings):
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [settings.REDIS_URL], "prefix": "omoi-test"},
        }
    }
    channel_layers.backends.clear()
    try:
        _, token = make_operator("viewer")
        event, received = run(_feed_roundtrip(token))
        assert received["id"] == str(event.id)
    finally:
        channel_layers.backends.clear()


@pytest.mark.django_db(transaction=True)
def test_it_refuses_browsers_from_other_sites(make_operator):
    _, token = make_operator("viewer")
    feed = WebsocketCommunicator(
        application,
        "/ws/console/",
        headers=[
            (b"origin", b"http://evil.example"),
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
    )
    assert run(_connects(feed)) is False  # the handshake itself is refused
    accepted = WebsocketCommunicator(
        application, "/ws/console/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    assert run(_connects(accepted))


async def _connects(feed) -> bool:
    connected, _ = await feed.connect(timeout=WAIT)
    await feed.disconnect()
    return connected


@pytest.mark.django_db(transaction=True)
def test_it_refuses_users_without_a_role(seeded):
    from django.contrib.auth import get_user_model

    from omoi_console.models import OperatorToken
    from omoi_console.top.consumers import CLOSE_FORBIDDEN

    user = get_user_model().objects.create_user("no-role")
    _, raw = OperatorToken.issue(user=user)
    assert run(refused(communicator(raw))) == CLOSE_FORBIDDEN


@pytest.mark.django_db(transaction=True)
def test_it_ignores_whatever_a_client_sends(make_operator):
    _, token = make_operator("viewer")

    async def chatter():
        feed = communicator(token)
        await feed.connect(timeout=WAIT)
        await feed.send_to(text_data="this is not json {")
        await feed.send_to(bytes_data=b"\x00\xff")
        assert await feed.receive_nothing(timeout=0.2)
        event = await database_sync_to_async(publish)("monitor.agent.heartbeat_lost", LOST)
        received = await receive_event(feed, "monitor.agent.heartbeat_lost")
        await feed.disconnect()
        return event, received

    event, received = run(chatter())
    assert received["id"] == str(event.id)


async def close_code_over_the_wire(url: str, headers: dict) -> int:
    async with websockets.connect(url, additional_headers=headers) as socket:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    return closed.value.rcvd.code


@pytest.mark.django_db(transaction=True)
def test_a_real_server_tells_the_client_why_it_was_refused(server, seeded):
    from django.contrib.auth import get_user_model

    from omoi_console.models import OperatorToken
    from omoi_console.top.consumers import CLOSE_FORBIDDEN

    _, no_role = OperatorToken.issue(user=get_user_model().objects.create_user("no-role"))
    url = f"ws://127.0.0.1:{server.port}/ws/console/"
    origin = {"Origin": "http://127.0.0.1"}

    assert run(close_code_over_the_wire(url, origin)) == CLOSE_UNAUTHENTICATED
    forbidden = {**origin, "Authorization": f"Bearer {no_role}"}
    assert run(close_code_over_the_wire(url, forbidden)) == CLOSE_FORBIDDEN


def test_a_real_server_closes_unknown_feeds_with_4404(server):
    from omoi_console.top.consumers import CLOSE_NOT_FOUND

    for path in ("/ws/nope/", "/ws/console"):
        url = f"ws://127.0.0.1:{server.port}{path}"
        assert run(close_code_over_the_wire(url, {"Origin": "http://127.0.0.1"})) == CLOSE_NOT_FOUND


def state_changes(count: int) -> list:
    from omoi_console.foundation.events import NewEvent

    return [
        NewEvent(
            "monitor.agent.state_changed",
            {
                "agent_id": f"worker-{n:03d}",
                "role": "worker",
                "from_state": "running",
                "to_state": "degraded",
                "reason": "1 heartbeat(s) missed",
                "actor": "monitor",
            },
        )
        for n in range(count)
    ]


@pytest.mark.django_db(transaction=True)
def test_it_forwards_a_batch_of_events_as_one_message(make_operator):
    from omoi_console.foundation.events import publish_many

    _, token = make_operator("viewer")

    async def mass_outage():
        feed = communicator(token)
        await feed.connect(timeout=WAIT)
        events = await database_sync_to_async(publish_many)(state_changes(50))
        message = await feed.receive_json_from(timeout=WAIT)
        assert await feed.receive_nothing(timeout=0.2)  # one message, not fifty
        await feed.disconnect()
        return events, message

    events, message = run(mass_outage())
    assert message["type"] == "events"
    assert [e["id"] for e in message["events"]] == [str(e.id) for e in events]
    assert message["events"][7]["payload"]["agent_id"] == "worker-007"


def test_a_feed_filter_passes_what_its_subscriber_asked_for():
    from omoi_console.top.consumers import FeedFilter

    wanted = FeedFilter.parse(
        {
            "type": "filter",
            "events": ["monitor.alert.*"],
            "labels": {"owner": "team-a"},
            "min_severity": "error",
        }
    )

    def alert(name="monitor.alert.triggered", owner="team-a", severity="critical"):
        return {"name": name, "payload": {"labels": {"owner": owner}, "severity": severity}}

    assert wanted.admits(alert())
    assert wanted.admits(alert(name="monitor.alert.resolved", severity=None))
    assert not wanted.admits(alert(owner="team-b"))
    assert not wanted.admits(alert(severity="warning"))
    assert not wanted.admits(alert(name="monitor.agent.heartbeat_lost"))
    agents = FeedFilter.parse({"type": "filter", "labels": {"role": "worker"}})
    assert agents.admits({"name": "monitor.agent.stuck", "payload": {"role": "worker"}})
    assert not agents.admits({"name": "monitor.agent.stuck", "payload": {"role": "monitor"}})
    assert FeedFilter().admits(alert(owner="anyone"))


@pytest.mark.parametrize(
    "message",
    [
        {"type": "filter", "events": "monitor.*"},
        {"type": "filter", "events": [""]},
        {"type": "filter", "labels": {"bad name!": "x"}},
        {"type": "filter", "labels": {"owner": 7}},
        {"type": "filter", "min_severity": "loud"},
        {"type": "filter", "colour": "red"},
    ],
)
def test_it_refuses_a_filter_it_cannot_apply(message):
    from omoi_console.top.consumers import FeedFilter

    with pytest.raises(ValueError):
        FeedFilter.parse(message)


@pytest.mark.django_db(transaction=True)
def test_each_subscriber_gets_only_the_alert_changes_it_filtered_for(make_operator):
    _, token = make_operator("viewer")
    critical = {
        "alert_id": 1,
        "rule": "r",
        "severity": "critical",
        "fingerprint": "f",
        "labels": {"owner": "team-a"},
        "summary": "s",
    }
    other_team = {**critical, "alert_id": 2, "labels": {"owner": "team-b"}}

    async def scenario():
        narrow, everything = communicator(token), communicator(token)
        await narrow.connect(timeout=WAIT)
        await everything.connect(timeout=WAIT)
        await narrow.send_json_to({"type": "filter", "labels": {"owner": "team-a"}})
        assert (await narrow.receive_json_from(timeout=WAIT))["type"] == "filter.accepted"
        await narrow.send_json_to({"type": "filter", "min_severity": "loud"})
        assert (await narrow.receive_json_from(timeout=WAIT))["type"] == "filter.refused"
        for payload in (other_team, critical):
            await database_sync_to_async(publish)("monitor.alert.triggered", payload)
        first = await receive_event(narrow, "monitor.alert.triggered")
        seen = [await receive_event(everything, "monitor.alert.triggered") for _ in range(2)]
        nothing_more = await narrow.receive_nothing(timeout=0.3)
        await narrow.disconnect()
        await everything.disconnect()
        return first, seen, nothing_more

    first, seen, nothing_more = run(scenario())
    assert first["payload"]["alert_id"] == 1
    assert sorted(e["payload"]["alert_id"] for e in seen) == [1, 2]
    assert nothing_more
