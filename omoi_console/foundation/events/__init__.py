"""The durable event bus. Imports no app: apps import it, never the reverse.

Use ``publish`` or ``publish_many`` to emit, ``subscribe`` to listen (in
``AppConfig.ready()``), ``event_trace`` to act on an event of a batch in its trace.
"""

from omoi_console.foundation.events.bus import (
    NewEvent,
    dispatch,
    dispatch_many,
    publish,
    publish_many,
    sweep,
)
from omoi_console.foundation.events.catalog import CATALOG
from omoi_console.foundation.events.registry import subscribe
from omoi_console.foundation.events.tracing import event_trace

__all__ = [
    "CATALOG",
    "NewEvent",
    "dispatch",
    "dispatch_many",
    "event_trace",
    "publish",
    "publish_many",
    "subscribe",
    "sweep",
]
