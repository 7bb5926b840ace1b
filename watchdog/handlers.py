"""What the watchdog does with events from below: agents failed, stuck and recovered, alerts.

Batch handlers: a mass outage is one task; each event is acted on in its own trace,
and the actions of a batch are opened together (``watchdog.batch``): what they read
is read once for the batch.
"""

from monitoring.models import AgentState
from omoi_console.foundation.events import event_trace, subscribe
from watchdog import services, storm
from watchdog.batch import opening_together
from watchdog.models import Trigger


def open_for_failures(events) -> None:
    """Open the remediation of every failed agent the events name, as one batch."""
    with opening_together(event.payload["agent_id"] for event in events):
        for event in events:
            with event_trace(event):
                services.open_remediation(
                    Trigger.AGENT_FAILED, event.payload["agent_id"], event_id=event.id
                )


@subscribe("monitor.agent.heartbeat_lost", handler_id="watchdog.heartbeat_lost", batch=True)
def on_heartbeat_lost(events):
    open_for_failures(events)


@subscribe("monitor.agent.state_changed", handler_id="watchdog.failure_reported", batch=True)
def on_state_changed(events):
    # The other way into FAILED: the agent says so itself. A move to FAILED by
    # the monitor is a lost heartbeat, handled above after alerting has seen it.
    reported = [
        event
        for event in events
        if event.payload["to_state"] == AgentState.FAILED
        and event.payload["actor"] == f"agent:{event.payload['agent_id']}"
    ]
    if reported:
        open_for_failures(reported)


@subscribe("monitor.agent.stuck", handler_id="watchdog.agent_stuck", batch=True)
def on_agent_stuck(events):
    # Alive but not working is treated like a failure: the same policies act on it.
    open_for_failures(events)


@subscribe("monitor.agent.recovered", handler_id="watchdog.agent_recovered", batch=True)
def on_agent_recovered(events):
    for event in events:
        with event_trace(event):
            services.verify_recovery(event.payload["agent_id"])
    # A role whose restarts a storm paused resumes as soon as enough of it is back.
    storm.resume_recovered()


@subscribe("monitor.alert.triggered", handler_id="watchdog.alert_triggered", batch=True)
def on_alert_triggered(events):
    # Only policies with the alert trigger act on alerts (matched on rule, severity,
    # labels); the agent is the one the alert's labels name.
    named = []
    for event in events:
        labels = event.payload.get("labels") or {}
        agent_id = labels.get("agent_id") or labels.get("agent")
        if agent_id:
            named.append((event, agent_id))
    if not named:
        return
    alert_ids = [event.payload["alert_id"] for event, _ in named]
    with opening_together([agent_id for _, agent_id in named], alert_ids=alert_ids):
        for event, agent_id in named:
            with event_trace(event):
                services.open_remediation(
                    Trigger.ALERT, agent_id, event_id=event.id, alert=event.payload
                )
