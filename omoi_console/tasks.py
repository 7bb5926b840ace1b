# Celery autodiscovery looks for <app>.tasks; the bus keeps its tasks beside it.
from omoi_console.foundation.events.tasks import dispatch_event, sweep_events

__all__ = ["dispatch_event", "sweep_events"]
