"""What every rule kind offers: the fields it uses, their checks, and a set-based evaluation.

A kind evaluates a rule as one query (or a few, never one per series or agent)
and returns the label sets that meet the rule's condition now, each with the
value that met it. The evaluator (``alerting.evaluator``) turns that set into
alert changes: pending, firing, kept firing, resolved. A kind that is driven by
events instead (``event_driven``) is skipped by the evaluator.
"""

from dataclasses import dataclass
from datetime import datetime

# The fields of AlertRule whose use depends on the kind. A rule may set only
# those its kind uses, and must set those its kind requires.
KIND_FIELDS = (
    "metric",
    "matchers",
    "aggregation",
    "window",
    "group_by",
    "operator",
    "threshold",
)


@dataclass(frozen=True)
class Match:
    """One label set that meets the condition, with the value that met it (if any)."""

    labels: dict[str, str]
    value: float | None = None


@dataclass(frozen=True)
class Param:
    """A parameter of ``AlertRule.params`` that a kind understands."""

    help: str
    check: object = None  # callable(value) raising ValueError, or None
    required: bool = False


class RuleKind:
    """Subclasses set the class attributes and implement ``evaluate``."""

    name = ""
    label = ""
    uses: frozenset = frozenset()  # of KIND_FIELDS
    requires: frozenset = frozenset()  # of KIND_FIELDS
    params: dict[str, Param] = {}
    event_driven = False

    def labels_of(self, rule) -> set[str]:
        """The labels an alert of this rule carries (for checking summary placeholders).

        Grouped by ``agent``, an alert also carries the agent's ``owner`` and ``role``.
        """
        labels = set(rule.group_by or [])
        return labels | {"owner", "role"} if "agent" in labels else labels

    def clean(self, rule) -> dict[str, list[str]]:
        """Checks beyond presence: return problems by field name."""
        return {}

    def evaluate(self, rule, now: datetime) -> list[Match]:
        raise NotImplementedError

    def evaluate_many(self, rules, now: datetime) -> dict[int, list[Match]]:
        """Several rules of this kind at once, by rule id: a kind whose rules can share
        their reads overrides it (see ``ThresholdKind``). If it raises, the evaluator
        evaluates each rule alone, so one broken rule still fails alone."""
        return {rule.pk: self.evaluate(rule, now) for rule in rules}
