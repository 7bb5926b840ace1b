"""Forward every event to the console's Channels group.

Registered as a batch handler outside any transaction: a dispatched batch is one
channel-layer message, and no database transaction waits on the send. A
channel-layer outage leaves the events pending and the sweeper retries the
broadcast like any other delivery; a crash between send and receipt sends again,
which the console tolerates (it keys events by id).
"""

import asyncio
import threading

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

CONSOLE_GROUP = "console"
SEND_TIMEOUT_SECONDS = 5
# Events per channel-layer message: a mass outage is a few messages, each of bounded size.
EVENTS_PER_MESSAGE = 1000

_server_loop: asyncio.AbstractEventLoop | None = None
_server_thread: int | None = None


def bind_server_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Tell the bus which loop an in-process server runs, so sends from other threads go there.

    The in-memory channel layer's queues belong to the server's loop; from a
    worker thread ``run_coroutine_threadsafe`` delivers in about a millisecond,
    where ``async_to_sync`` would start a loop of its own and deliver late.
    """
    global _server_loop, _server_thread
    _server_loop = loop
    _server_thread = threading.get_ident() if loop is not None else None


def event_body(event) -> dict:
    return {
        "id": str(event.id),
        "name": event.name,
        "payload": event.payload,
        "occurred_at": event.occurred_at.isoformat(),
        "trace_id": event.trace_id,
    }


def event_message(event) -> dict:
    return {"type": "event.message", "event": event_body(event)}


def events_message(events) -> dict:
    """Several events in one channel-layer message; a single event keeps its own shape."""
    if len(events) == 1:
        return event_message(events[0])
    return {"type": "events.message", "events": [event_body(event) for event in events]}


def send_to_console(message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    loop = _server_loop
    if loop is not None and loop.is_running() and threading.get_ident() != _server_thread:
        future = asyncio.run_coroutine_threadsafe(layer.group_send(CONSOLE_GROUP, message), loop)
        future.result(timeout=SEND_TIMEOUT_SECONDS)
    else:
        async_to_sync(layer.group_send)(CONSOLE_GROUP, message)


def broadcast_events(events) -> None:
    """Send a dispatched batch to the console: one message per ``EVENTS_PER_MESSAGE`` events."""
    for start in range(0, len(events), EVENTS_PER_MESSAGE):
        send_to_console(events_message(events[start : start + EVENTS_PER_MESSAGE]))
