"""The named hot paths ``manage.py profile`` runs against the configured database."""

from django.utils import timezone

from alerting import evaluator
from alerting.models import AlertRule
from monitoring import samples

# The series a profiled ingest writes to: one probe agent's queues, never a real agent's.
PROBE_AGENT = "profile-probe"
PROBE_QUEUES = 10


def ingest(size: int) -> str:
    """One metric batch of ``size`` samples through the ingest service, as an operator sends it."""
    now = timezone.now().timestamp()
    batch = [
        {
            "name": "queue_depth",
            "labels": {"agent": PROBE_AGENT, "queue": f"q-{n % PROBE_QUEUES}"},
            "ts": now - (size - n) * 0.001,
            "value": float(n % 97),
        }
        for n in range(size)
    ]
    stored = samples.ingest(batch)
    return f"{stored.samples} samples stored, {stored.series_created} series created"


def rule_tick() -> str:
    """One evaluation of every enabled rule, as the tick evaluates the rules that are due."""
    now = timezone.now()
    rules = list(AlertRule.objects.filter(enabled=True).order_by("pk"))
    evaluator.evaluate_batch(rules, now)
    return f"{len(rules)} rules evaluated"


HOT_PATHS = {
    "ingest": "a metric batch through the ingest service (--samples per batch)",
    "rule-tick": "one evaluation of every enabled alert rule",
}
