"""What alerting does with events: heartbeats lost and recovered, the watchdog giving up.

``watchdog.escalated``, ``watchdog.approval.*`` and ``watchdog.storm.*`` come from above
(the watchdog imports alerting, never the reverse): alerting knows them by name only,
as every subscriber knows an event.

Batch handlers: a mass outage is one task; each event is acted on in its own trace.
"""

from alerting import lifecycle
from alerting.routing import tree_held
from omoi_console.foundation.events import event_trace, subscribe


@subscribe("monitor.agent.heartbeat_lost", handler_id="alerting.heartbeat_lost", batch=True)
def on_heartbeat_lost(events):
    with tree_held():
        if len(events) > 1:
            # A mass outage: the agents' alerts written together (the watchdog's handler
            # runs after this one on each batch, so its remediations wait for them).
            lifecycle.fire_heartbeat_alerts_for(events)
            return
        for event in events:
            with event_trace(event):
                lifecycle.fire_heartbeat_alerts(event.payload)


@subscribe("monitor.agent.recovered", handler_id="alerting.agent_recovered", batch=True)
def on_agent_recovered(events):
    with tree_held():
        for event in events:
            with event_trace(event):
                lifecycle.resolve_heartbeat_alerts(event.payload)


@subscribe("watchdog.escalated", handler_id="alerting.remediation_escalated", batch=True)
def on_remediation_escalated(events):
    with tree_held():
        for event in events:
            with event_trace(event):
                lifecycle.fire_remediation_alerts(event.payload)


@subscribe("watchdog.approval.requested", handler_id="alerting.approval_requested", batch=True)
def on_approval_requested(events):
    with tree_held():
        for event in events:
            with event_trace(event):
                lifecycle.fire_approval_alerts(event.payload)


@subscribe("watchdog.approval.decided", handler_id="alerting.approval_decided", batch=True)
def on_approval_decided(events):
    with tree_held():
        for event in events:
            with event_trace(event):
                lifecycle.resolve_approval_alerts(event.payload)


@subscribe("watchdog.storm.started", handler_id="alerting.storm_started", batch=True)
def on_storm_started(events):
    with tree_held():
        for event in events:
            with event_trace(event):
                lifecycle.fire_storm_alerts(event.payload)


@subscribe("watchdog.storm.ended", handler_id="alerting.storm_ended", batch=True)
def on_storm_ended(events):
    with tree_held():
        for event in events:
            with event_trace(event):
                lifecycle.resolve_storm_alerts(event.payload)
