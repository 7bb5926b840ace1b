from monitoring.models import AgentState
from omoi_console.foundation.events import subscribe
from watchdog import services
from watchdog.models import Trigger


@subscribe("monitor.agent.heartbeat_lost", handler_id="watchdog.heartbeat_lost")
def on_heartbeat_lost(event):
    services.open_remediation(Trigger.AGENT_FAILED, event.payload["agent_id"], event_id=event.id)


@subscribe("monitor.agent.state_changed", handler_id="watchdog.failure_reported")
def on_state_changed(event):
    # The other way into FAILED: the agent says so itself. A move to FAILED by
    # the monitor is a lost heartbeat, handled above after alerting has seen it.
    payload = event.payload
    if (
        payload["to_state"] == AgentState.FAILED
        and payload["actor"] == f"agent:{payload['agent_id']}"
    ):
        services.open_remediation(Trigger.AGENT_FAILED, payload["agent_id"], event_id=event.id)


@subscribe("monitor.agent.recovered", handler_id="watchdog.agent_recovered")
def on_agent_recovered(event):
    services.verify_recovery(event.payload["agent_id"])
