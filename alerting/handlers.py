"""What alerting does with events from below: heartbeats lost and recovered."""

from alerting import services
from omoi_console.foundation.events import subscribe


@subscribe("monitor.agent.heartbeat_lost", handler_id="alerting.heartbeat_lost")
def on_heartbeat_lost(event):
    services.fire_heartbeat_alerts(event.payload)


@subscribe("monitor.agent.recovered", handler_id="alerting.agent_recovered")
def on_agent_recovered(event):
    services.resolve_heartbeat_alerts(event.payload)
