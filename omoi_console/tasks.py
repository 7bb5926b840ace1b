# Celery autodiscovery looks for <app>.tasks; the foundation keeps its tasks beside their code.
from omoi_console.foundation.events.tasks import dispatch_event, sweep_events
from omoi_console.foundation.retention.tasks import prune_expired

__all__ = ["dispatch_event", "prune_expired", "sweep_events"]
