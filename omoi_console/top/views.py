"""The operator console: one page, kept live by the websocket feed."""

import structlog
from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.core.cache import cache
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control

from alerting.api.serializers import AlertSerializer
from alerting.models import OPEN_STATUSES, Alert
from monitoring.api.serializers import AgentSerializer
from monitoring.models import Agent, AgentState
from omoi_console.models import Event
from watchdog.api.serializers import RemediationActionSerializer
from watchdog.guards import watchdog_status
from watchdog.models import RemediationAction

log = structlog.get_logger(__name__)

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
    """Readiness for load balancers: the database and, in production, Redis answer."""
    checks = {"database": _reachable(_ping_database)}
    if settings.REDIS_URL:
        checks["redis"] = _reachable(_ping_cache)
    healthy = all(state == "ok" for state in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503
    )


def _reachable(ping) -> str:
    try:
        ping()
    except Exception:
        # Why it failed belongs in the log, not in an unauthenticated response.
        log.warning("healthz.unreachable", check=ping.__name__, exc_info=True)
        return "unreachable"
    return "ok"


def _ping_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _ping_cache() -> None:
    # Redis carries the channel layer and the broker too; the cache is the cheap probe.
    cache.get("healthz")


@cache_control(max_age=86400, public=True)
def favicon(request):
    # Browsers ask for it on every page, the error pages included; no icon yet.
    return HttpResponse(status=204)
