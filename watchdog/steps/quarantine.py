"""``quarantine``: the agent is taken out of service until an operator releases it."""

from monitoring.models import AgentState
from monitoring.transitions import ALLOWED_TRANSITIONS
from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind


@register
class Quarantine(StepKind):
    name = "quarantine"
    label = "Quarantine"
    removes_capacity = True

    def act(self, ctx: StepContext) -> Outcome:
        agent = ctx.agent
        if AgentState.QUARANTINED not in ALLOWED_TRANSITIONS[agent.state]:
            return Outcome(f"cannot quarantine a {agent.state} agent")
        ctx.adapter.set_state(
            agent, AgentState.QUARANTINED, reason=ctx.action.reason, actor=ctx.action.actor
        )
        return Outcome("quarantined")
