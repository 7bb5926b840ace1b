"""One agent's and one action's page: what the console itself logged and traced about them."""

import re

from django.contrib.auth.decorators import login_required, permission_required
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404, render

from monitoring.models import Agent
from observability.filtersets import TRACE_ID
from observability.related import lines_about, traces_about
from observability.waterfall import trace_waterfall
from omoi_console.foundation.api.fields import BIGINT_MAX
from watchdog.models import ActionStatus, RemediationAction

STORE_PERMISSIONS = ("observability.view_logrecord", "observability.view_spanrecord")


@login_required
@permission_required(("monitoring.view_agent", *STORE_PERMISSIONS), raise_exception=True)
def agent_page(request, agent_id: str):
    agent = get_object_or_404(Agent, pk=agent_id)
    link = Q(agent_id=agent.pk)
    traces = traces_about(link)
    return render(
        request,
        "console/agent.html",
        {
            "agent": agent,
            "actions": agent.remediations.select_related("policy")[:20],
            **_store_context(request, link, traces),
        },
    )


@login_required
@permission_required(("watchdog.view_remediationaction", *STORE_PERMISSIONS), raise_exception=True)
def action_page(request, pk: int):
    if pk > BIGINT_MAX:
        raise Http404("No such action.")
    action = get_object_or_404(RemediationAction.objects.select_related("policy"), pk=pk)
    link = Q(action_id=str(action.pk))
    traces = traces_about(link, also=[action.trace_id] if action.trace_id else [])
    awaiting = action.status == ActionStatus.AWAITING_APPROVAL
    return render(
        request,
        "console/action.html",
        {
            "action": action,
            "awaiting": awaiting,
            # What the step waiting on the decision would do, from its audit line.
            "requested": _approval_request(action) if awaiting else None,
            **_store_context(request, link, traces, with_traces=True),
        },
    )


def _approval_request(action: RemediationAction) -> dict | None:
    for entry in reversed(action.history):
        if entry.get("approval") == "requested":
            return entry
    return None


def _store_context(request, link: Q, traces: list[str], *, with_traces: bool = False) -> dict:
    """Log lines and the chosen trace's waterfall (``?trace=``, else the newest)."""
    asked = request.GET.get("trace", "")
    chosen = asked if re.fullmatch(TRACE_ID, asked) else (traces[0] if traces else "")
    # An action's page also shows the lines of its trace that do not name it
    # (the alert that led to it, the notification); an agent's would be too many.
    lines = lines_about(link, [chosen] if with_traces and chosen else [])
    return {
        "lines": lines,
        "traces": traces,
        "chosen": chosen,
        "waterfall": trace_waterfall(chosen) if chosen else None,
        "bad_trace": bool(asked) and asked != chosen,
    }
