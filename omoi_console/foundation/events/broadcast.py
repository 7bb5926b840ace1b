"""Forward every event to the console's Channels group.

Registered as an ordinary handler, so a channel-layer outage leaves the event
pending and the sweeper retries the broadcast like any other delivery.
"""

import asyncio
import threading

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

CONSOLE_GROUP = "console"
SEND_TIMEOUT_SECONDS = 5

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


def event_message(event) -> dict:
    return {
        "type": "event.message",
        "event": {
            "id": str(event.id),
            "name": event.name,
            "payload": event.payload,
            "occurred_at": event.occurred_at.isoformat(),
            "trace_id": event.trace_id,
        },
    }


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


def broadcast_event(event) -> None:
    send_to_console(event_message(event))
