from omoi_console.events import subscribe
from watchdog import services
from watchdog.models import Trigger


@subscribe("monitor.agent.heartbeat_lost", handler_id="watchdog.heartbeat_lost")
def on_heartbeat_lost(event):
    services.open_remediation(Trigger.HEARTBEAT_LOST, event.payload["agent_id"], event_id=event.id)


@subscribe("monitor.agent.recovered", handler_id="watchdog.agent_recovered")
def on_agent_recovered(event):
    services.verify_recovery(event.payload["agent_id"])
