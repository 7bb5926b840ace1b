"""The rule evaluator: due rules claimed across workers, each evaluated set-based.

A periodic job claims the rules whose ``next_evaluation_at`` has come with
``SELECT ... FOR UPDATE SKIP LOCKED`` and moves it on at once (a lease: two
workers never evaluate one rule in the same round, and a worker that dies only
delays its rules to their next turn). Each rule is then evaluated in its own
transaction: its kind returns every label set that meets the condition now,
and the alerts follow, as in Prometheus:

- a new label set opens a *pending* alert, which fires once the condition has
  held for the rule's ``for`` (at once when ``for`` is zero);
- a pending alert whose condition clears is dropped without a notification;
- a firing alert whose condition clears stays firing for ``keep_firing_for``
  after the last evaluation that met it, then resolves.

A rule whose evaluation raises is recorded (``last_error``) and retried at its
next turn; the other rules go on.
"""

import time
from datetime import datetime

import structlog
from django.db import transaction
from django.utils import timezone

from alerting import lifecycle
from alerting.models import OPEN_STATUSES, Alert, AlertRule, AlertStatus
from alerting.rules import KINDS

log = structlog.get_logger(__name__)

# Rules claimed per round trip; a worker claims again until none is due.
CLAIM_BATCH = 50


def evaluate_due(now: datetime | None = None, *, budget_seconds: float = 10.0) -> int:
    """Evaluate every due rule this worker can claim; how many it evaluated."""
    deadline = time.monotonic() + budget_seconds
    done = 0
    while time.monotonic() < deadline:
        moment = now or timezone.now()
        rules = claim(moment)
        if not rules:
            break
        for rule in rules:
            evaluate_rule(rule, moment)
            done += 1
    return done


def claim(now: datetime) -> list[AlertRule]:
    """Take a batch of due rules and move their next evaluation on (the lease)."""
    timed = [name for name, kind in KINDS.items() if not kind.event_driven]
    with transaction.atomic():
        rules = list(
            AlertRule.objects.select_for_update(skip_locked=True)
            .filter(enabled=True, kind__in=timed, next_evaluation_at__lte=now)
            .order_by("next_evaluation_at")[:CLAIM_BATCH]
        )
        for rule in rules:
            rule.next_evaluation_at = now + rule.evaluate_every
        AlertRule.objects.bulk_update(rules, ["next_evaluation_at"])
    return rules


def evaluate_rule(rule: AlertRule, now: datetime) -> None:
    """One evaluation of one rule, applied to its alerts in one transaction."""
    try:
        with transaction.atomic():
            matches = rule.rule_kind.evaluate(rule, now)
            apply(rule, matches, now)
            error = ""
    except Exception as exc:  # a broken rule must not stop the others
        log.exception("rule.evaluation_failed", rule=rule.name)
        error = f"{type(exc).__name__}: {exc}"[:2000]
    AlertRule.objects.filter(pk=rule.pk).update(last_evaluated_at=now, last_error=error)


def apply(rule: AlertRule, matches, now: datetime) -> None:
    """Move the rule's alerts to what the evaluation found."""
    wanted = {}
    for match in matches:
        labels = {**rule.labels, **match.labels}
        wanted[lifecycle.fingerprint(rule.name, labels)] = (labels, match.value)
    open_now = {
        alert.fingerprint: alert
        for alert in Alert.objects.filter(rule=rule, status__in=OPEN_STATUSES).select_related(
            "rule"
        )
    }
    for fingerprint, (labels, value) in wanted.items():
        alert = open_now.get(fingerprint)
        if alert is None:
            alert = lifecycle.open_pending(rule, labels, value, now)
            if rule.for_duration.total_seconds() <= 0:
                lifecycle.promote(alert, now)
            continue
        alert.value, alert.last_matched_at = value, now
        alert.summary = lifecycle.render_template(rule.summary, alert.labels, value)[:500]
        if alert.status == AlertStatus.PENDING and now - alert.started_at >= rule.for_duration:
            lifecycle.promote(alert, now)
        else:
            alert.save(update_fields=["value", "last_matched_at", "summary"])
    for fingerprint, alert in open_now.items():
        if fingerprint in wanted:
            continue
        if alert.status == AlertStatus.PENDING:
            lifecycle.drop_pending(alert, now)
        elif now - (alert.last_matched_at or alert.started_at) >= rule.keep_firing_for:
            lifecycle.resolve_alert(alert, reason="condition cleared")
