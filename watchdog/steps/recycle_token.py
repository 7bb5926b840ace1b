"""``recycle_token``: the agent gets a new token with its next heartbeat; the old one dies then."""

from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind


@register
class RecycleToken(StepKind):
    name = "recycle_token"
    label = "Recycle the agent's token"

    def act(self, ctx: StepContext) -> Outcome:
        command = ctx.adapter.recycle_token(
            ctx.agent,
            reason=ctx.action.reason,
            actor=ctx.action.actor,
            serves=ctx.action.serves,
            expires_at=ctx.expires_at,
        )
        return Outcome("token recycle queued", command)
