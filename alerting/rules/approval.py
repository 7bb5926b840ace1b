"""``approval``: a remediation step waits for an operator (``watchdog.approval.requested``).

Driven by ``watchdog.approval.requested`` (a policy step with ``approve`` came due)
and resolved by ``watchdog.approval.decided`` (approved, rejected, expired or
withdrawn), in ``alerting.handlers``. One alert per action and step, labelled with
the agent, the policy, the action and the step. It uses no condition fields.
"""

from alerting.rules import register
from alerting.rules.base import RuleKind

APPROVAL_LABELS = frozenset({"agent_id", "role", "owner", "policy", "action_id", "step", "kind"})


@register
class ApprovalKind(RuleKind):
    name = "approval"
    label = "Remediation step awaiting approval"
    event_driven = True

    def labels_of(self, rule) -> set[str]:
        return set(APPROVAL_LABELS)
