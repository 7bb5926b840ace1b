"""``failover``: the agent's current task goes to a healthy agent of its role.

The target is one agent, chosen the same way every time (idle first, then
running without a task; same role; never the agent itself, nor one drained,
unhealthy or already promised a task) and claimed under a row lock, so two
failovers never hand one agent two tasks. The task leaves the failed agent when
the target's heartbeat takes the command (monitoring moves it then): it never has
two owners, and a command that never leaves orphans nothing. A short network split
must not move work, so the step waits until the agent has been down for
``OMOI_WATCHDOG_FAILOVER_GRACE_SECONDS``; the storm guard holds it like a restart.
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from monitoring.models import HEALTHY_STATES, Agent
from omoi_console.foundation.events import publish
from watchdog.selection import failover_target
from watchdog.steps import register
from watchdog.steps.base import Outcome, StepContext, StepKind, recorded

GATE = "partition_grace"


@register
class Failover(StepKind):
    name = "failover"
    label = "Fail over the current task"
    held_in_storm = True
    unhealed = "neither healthy nor its task running on the agent that took it"

    def plan(self, ctx: StepContext) -> str:
        agent = ctx.agent
        why = self._idle_reason(agent)
        if why:
            return f"fail over {agent.id}: {why}"
        target = failover_target(agent, timezone.now())
        to = f"{target.id} ({target.state} {target.role})" if target else "no agent free now"
        return f"hand task {agent.current_task} of {agent.id} to {to}"

    def nothing_to_do(self, ctx: StepContext, now) -> str:
        agent = ctx.agent
        why = self._idle_reason(agent)
        if why:
            return why
        if failover_target(agent, now) is None:
            return _no_target(agent)
        return ""

    def not_before(self, agent: Agent, now):
        since = agent.unhealthy_since
        if since is None:
            return None
        return since + timedelta(seconds=settings.WATCHDOG_FAILOVER_GRACE_SECONDS), GATE

    def act(self, ctx: StepContext) -> Outcome:
        source, action, now = ctx.agent, ctx.action, timezone.now()
        task_id, progress = source.current_task, source.task_progress
        target = failover_target(source, now, claim=True)
        if target is None:
            return Outcome(_no_target(source), acted=False)
        command = ctx.adapter.hand_over_task(
            source,
            target,
            task_id=task_id,
            progress=progress,
            reason=action.reason,
            actor=action.actor,
            serves=action.serves,
            expires_at=ctx.expires_at,
        )
        if command is None:
            return Outcome(f"{source.id} no longer holds task {task_id}", acted=False)
        record = {"source": source.pk, "target": target.pk, "task": task_id, "progress": progress}
        publish(
            "watchdog.task.failed_over",
            {
                "action_id": action.pk,
                "agent_id": source.pk,
                "role": source.role,
                "policy": action.policy.name,
                "target_agent_id": target.pk,
                "task_id": task_id,
                "progress": progress,
            },
            key=f"task.failed_over:{action.pk}:{action.step_index}",
        )
        return Outcome(
            f"task {task_id} handed from {source.id} to {target.id}",
            command,
            record={"failover": record},
        )

    def verify(self, agent: Agent, action=None) -> bool:
        return agent.state in HEALTHY_STATES or self._taken(action)

    def verified(self, agent: Agent, action=None) -> str:
        if agent.state in HEALTHY_STATES:
            return "agent healthy again"
        handed = recorded(action, "failover")
        return f"task {handed['task']} running on {handed['target']}; {agent.id} is {agent.state}"

    def _taken(self, action) -> bool:
        """The agent that got the task reports it as its own and is healthy."""
        handed = recorded(action, "failover") if action is not None else {}
        if not handed:
            return False
        return Agent.objects.filter(
            pk=handed["target"], current_task=handed["task"], state__in=HEALTHY_STATES
        ).exists()

    @staticmethod
    def _idle_reason(agent: Agent) -> str:
        if agent.state in HEALTHY_STATES:
            return f"{agent.id} is {agent.state}: its task stays with it"
        if not agent.current_task:
            return f"{agent.id} has no current task: nothing to hand over"
        return ""


def _no_target(agent: Agent) -> str:
    return (
        f"no healthy {agent.role} is free to take task {agent.current_task} "
        f"(idle, or running without a task): nothing handed over"
    )
