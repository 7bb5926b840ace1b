"""The operator console: one page, kept live by the websocket feed."""

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control

from alerting.api.serializers import AlertSerializer
from alerting.models import OPEN_STATUSES, Alert
from monitoring.api.serializers import AgentSerializer
from monitoring.models import Agent, AgentState
from omoi_console.models import Event
from omoi_console.top.health import console_health
from watchdog.api.serializers import RemediationActionSerializer
from watchdog.guards import watchdog_status
from watchdog.models import ActionStatus, RemediationAction

RECENT = 50


def console_snapshot() -> dict:
    agents = Agent.objects.exclude(state=AgentState.TERMINATED)
    alerts = Alert.objects.filter(status__in=OPEN_STATUSES).select_related("rule")
    actions = RemediationAction.objects.select_related("policy")[:RECENT]
    events = Event.objects.order_by("-occurred_at")[:RECENT]
    return {
        "agents": AgentSerializer(agents, many=True).data,
        "alerts": AlertSerializer(alerts, many=True).data,
        "actions": RemediationActionSerializer(actions, many=True).data,
        "awaiting_approval": RemediationAction.objects.filter(
            status=ActionStatus.AWAITING_APPROVAL
        ).count(),
        "health": console_health(),
        "watchdog": watchdog_status(),
        "events": [
            {
                "id": str(e.id),
                "name": e.name,
                "payload": e.payload,
                "occurred_at": e.occurred_at.isoformat(),
                "trace_id": e.trace_id,
            }
            for e in events
        ],
    }


@login_required
@permission_required("omoi_console.view_event", raise_exception=True)
def console(request):
    return render(request, "console/index.html", {"snapshot": console_snapshot()})


@login_required
@permission_required("omoi_console.view_event", raise_exception=True)
def console_state(request):
    return JsonResponse(console_snapshot())


def healthz(request):
    """The database, Redis and the console's own processes: 200 when all are well, else 503.

    503 names what is down, e.g. {"status": "error", "worker": "stale 14s", ...}.
    """
    health = console_health()
    return JsonResponse(health, status=200 if health["status"] == "ok" else 503)


@cache_control(max_age=86400, public=True)
def favicon(request):
    # Browsers ask for it on every page, the error pages included; no icon yet.
    return HttpResponse(status=204)
