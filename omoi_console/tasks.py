# Celery autodiscovery looks for <app>.tasks; the foundation and the top keep their tasks
# beside their code.
from omoi_console.foundation.events.tasks import dispatch_event, sweep_events
from omoi_console.foundation.retention.tasks import prune_expired
from omoi_console.top.tasks import ping_deadman, record_self_metrics

__all__ = ["dispatch_event", "ping_deadman", "prune_expired", "record_self_metrics", "sweep_events"]
