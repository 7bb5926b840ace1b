"""``request_replacement``: ask for a new agent of the failed one's role.

Locally there is no one to ask: the request is the audit (the step's line in the
action's history) and ``watchdog.replacement.requested``, which a provisioner
follows. Through the http adapter the registry is asked. Either way the action
waits for a new healthy agent of the role, registered after the request.
"""

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from monitoring.models import HEALTHY_STATES, Agent
from omoi_console.foundation.events import publish
from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind, recorded


@register
class RequestReplacement(StepKind):
    name = "request_replacement"
    label = "Request a replacement agent"
    # A storm looks like a partition: asking for half a role again would double it.
    held_in_storm = True
    unhealed = "neither healthy nor replaced by a new healthy agent of its role"

    def plan(self, ctx: StepContext) -> str:
        return f"request a new {ctx.agent.role} to replace {ctx.agent.id}"

    def act(self, ctx: StepContext) -> Outcome:
        agent, action = ctx.agent, ctx.action
        asked = ctx.adapter.request_replacement(
            agent, reason=action.reason, actor=action.actor, serves=action.serves
        )
        request = {**asked, "requested_at": timezone.now().isoformat()}
        publish(
            "watchdog.replacement.requested",
            {
                "action_id": action.pk,
                "agent_id": agent.pk,
                "role": agent.role,
                "policy": action.policy.name,
                "via": request["via"],
                "registry_request_id": request.get("registry_request_id", ""),
            },
            key=f"replacement.requested:{action.pk}:{action.step_index}",
        )
        return Outcome(
            f"a new {agent.role} requested to replace {agent.id} ({request['via']})",
            record={"replacement": request},
        )

    def verify(self, agent: Agent, action=None) -> bool:
        return agent.state in HEALTHY_STATES or self._replacement(agent, action) is not None

    def verified(self, agent: Agent, action=None) -> str:
        if agent.state in HEALTHY_STATES:
            return "agent healthy again"
        return f"replaced by {self._replacement(agent, action)}; {agent.id} is {agent.state}"

    @staticmethod
    def _replacement(agent: Agent, action) -> str | None:
        """The first healthy agent of the role registered after the request, if any."""
        request = recorded(action, "replacement") if action is not None else {}
        if not request:
            return None
        return (
            Agent.objects.filter(
                role=request["role"],
                created_at__gt=parse_datetime(request["requested_at"]),
                state__in=HEALTHY_STATES,
            )
            .exclude(pk=agent.pk)
            .order_by("created_at", "id")
            .values_list("pk", flat=True)
            .first()
        )
