"""``escalate``: hand the agent to a person (``watchdog.escalated``, which alerting fires)."""

from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind


@register
class Escalate(StepKind):
    name = "escalate"
    label = "Escalate to a person"
    acts_on_agent = False

    def plan(self, ctx: StepContext) -> str:
        return f"escalate {ctx.agent.id} to a person"

    def act(self, ctx: StepContext) -> Outcome:
        # The orchestrator publishes the escalation as it closes the action.
        return Outcome("escalated by the policy", final=True)
