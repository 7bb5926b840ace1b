"""``release``: a quarantined agent is back in service (idle). Operators only."""

from monitoring.models import AgentState
from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind


@register
class Release(StepKind):
    name = "release"
    label = "Release from quarantine"
    manual_only = True

    def act(self, ctx: StepContext) -> Outcome:
        agent = ctx.agent
        if agent.state != AgentState.QUARANTINED:
            return Outcome(f"not quarantined ({agent.state}): nothing to release")
        ctx.adapter.set_state(
            agent, AgentState.IDLE, reason=ctx.action.reason, actor=ctx.action.actor
        )
        return Outcome("released to idle")
