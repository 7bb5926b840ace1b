"""The watchdog's numbers for Prometheus: remediation actions as they finish.

Counted in the process that finishes the action, once its transaction commits,
and summed across processes in multiprocess mode (see ``observability.prometheus``).
"""

from django.db import transaction
from prometheus_client import Counter

ACTIONS = Counter(
    "watchdog_actions",
    "Remediation actions finished, per step (restart_worker, ...) and outcome "
    "(succeeded, failed, skipped, dry_run).",
    ["action", "outcome"],
)


def count_action(step: str, outcome: str) -> None:
    """Count an action that reached ``outcome``, when the transaction that recorded it commits."""
    transaction.on_commit(lambda: ACTIONS.labels(step, outcome).inc())
