"""What every remediation step offers: plan, act, verify.

A step is one module in ``watchdog.steps`` that subclasses ``StepKind`` and
calls ``register``. ``plan`` says what it would do (shown for dry runs and in
the audit), ``act`` does it (through the registry adapter; returns the command
it queued, if any), ``verify`` says whether the agent is healed.
"""

from dataclasses import dataclass, field

from monitoring.models import HEALTHY_STATES, Agent, AgentCommand


@dataclass
class StepContext:
    """What a step gets: the action (its policy, serves tag, actor) and the agent."""

    action: object  # watchdog.models.RemediationAction
    agent: Agent
    adapter: object  # watchdog.adapters.RegistryAdapter
    expires_at: object = None  # when a command it queues stops being worth delivering


@dataclass(frozen=True)
class Outcome:
    detail: str
    command: AgentCommand | None = None
    # True for a step that ends the action (escalate): nothing is verified after it.
    final: bool = False
    # False when the step found nothing to do after all: the next step is due at once.
    acted: bool = True
    # Kept in the action's history with the step (who got a task, what was requested),
    # for the audit and for ``verify``.
    record: dict = field(default_factory=dict)


class StepKind:
    name = ""
    label = ""
    # Counted by the per-agent hourly cap and gated by the restart backoff.
    is_restart = False
    # Takes the agent out of service (restart, drain, quarantine): counted by the
    # capacity floor and paused by the storm guard.
    removes_capacity = False
    # Does something to the agent (so the rate limits and the kill switch apply);
    # False for a step that only hands over to a person.
    acts_on_agent = True
    # Only an operator runs it (manual actions); a policy may not list it.
    manual_only = False
    # What ``verify`` finding nothing means, as the explain endpoint words it.
    unhealed = "not healthy"

    @property
    def held_in_storm(self) -> bool:
        """Paused by the storm guard while much of the role failed at once."""
        return self.is_restart or self.removes_capacity

    def plan(self, ctx: StepContext) -> str:
        return f"{self.name} {ctx.agent.id}"

    def nothing_to_do(self, ctx: StepContext, now) -> str:
        """Why the step would do nothing now (then the next step is due at once); "" to act."""
        return ""

    def not_before(self, agent: Agent, now):
        """A moment before which the step may not act (it is deferred), with why; or None."""
        return None

    def act(self, ctx: StepContext) -> Outcome:
        raise NotImplementedError

    def verify(self, agent: Agent, action=None) -> bool:
        """Is the agent healed? By default: healthy again (idle or running)."""
        return agent.state in HEALTHY_STATES

    def verified(self, agent: Agent, action=None) -> str:
        """What a successful ``verify`` means, for the action's outcome."""
        return "agent healthy again"


def recorded(action, key: str) -> dict:
    """What the last act of the action's current step kept under ``key`` in its history."""
    for entry in reversed(action.history or []):
        if entry.get("step") == action.step_index and key in entry:
            return entry[key]
    return {}
