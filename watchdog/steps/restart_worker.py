"""``restart_worker``: a restart command, carrying the policy's graceful stop and a generation."""

from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind


@register
class RestartWorker(StepKind):
    name = "restart_worker"
    label = "Restart the worker"
    is_restart = True
    removes_capacity = True

    def plan(self, ctx: StepContext) -> str:
        grace = ctx.action.policy.graceful_stop_seconds
        return f"restart {ctx.agent.id} ({grace}s graceful stop)"

    def act(self, ctx: StepContext) -> Outcome:
        command = ctx.adapter.restart(
            ctx.agent,
            reason=ctx.action.reason,
            actor=ctx.action.actor,
            serves=ctx.action.serves,
            expires_at=ctx.expires_at,
            graceful_stop_seconds=ctx.action.policy.graceful_stop_seconds,
        )
        return Outcome(f"restart queued (generation {command.generation})", command)
