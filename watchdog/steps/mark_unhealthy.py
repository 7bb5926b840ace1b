"""``mark_unhealthy``: a live agent is moved to DEGRADED, so nothing counts on it meanwhile."""

from monitoring.models import AgentState
from monitoring.transitions import ALLOWED_TRANSITIONS
from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind


@register
class MarkUnhealthy(StepKind):
    name = "mark_unhealthy"
    label = "Mark unhealthy"

    def act(self, ctx: StepContext) -> Outcome:
        agent = ctx.agent
        if AgentState.DEGRADED not in ALLOWED_TRANSITIONS[agent.state]:
            return Outcome(f"already {agent.state}: nothing to mark")
        ctx.adapter.set_state(
            agent, AgentState.DEGRADED, reason=ctx.action.reason, actor=ctx.action.actor
        )
        return Outcome("marked degraded")
