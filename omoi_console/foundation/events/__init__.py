"""The durable event bus. Imports no app: apps import it, never the reverse.

Use ``publish`` to emit, ``subscribe`` to listen (in ``AppConfig.ready()``).
"""

from omoi_console.foundation.events.bus import dispatch, publish, sweep
from omoi_console.foundation.events.catalog import CATALOG
from omoi_console.foundation.events.registry import subscribe

__all__ = ["CATALOG", "dispatch", "publish", "subscribe", "sweep"]
