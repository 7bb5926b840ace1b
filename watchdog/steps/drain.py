"""``drain``: the agent finishes its current task and takes no new one."""

from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind


@register
class Drain(StepKind):
    name = "drain"
    label = "Drain"
    removes_capacity = True

    def act(self, ctx: StepContext) -> Outcome:
        command = ctx.adapter.drain(
            ctx.agent,
            reason=ctx.action.reason,
            actor=ctx.action.actor,
            serves=ctx.action.serves,
            expires_at=ctx.expires_at,
        )
        return Outcome("drain queued", command)
