"""The rule evaluator: due rules claimed across workers, each evaluated set-based.

A periodic job claims the rules whose ``next_evaluation_at`` has come with
``SELECT ... FOR UPDATE SKIP LOCKED`` and moves it on at once (a lease: two
workers never evaluate one rule in the same round, and a worker that dies only
delays its rules to their next turn). Each rule's kind returns every label set
that meets the condition now, and the alerts follow, as in Prometheus (the
changes of many rules written together, ``evaluate_batch``):

- a new label set opens a *pending* alert, which fires once the condition has
  held for the rule's ``for`` (at once when ``for`` is zero);
- a pending alert whose condition clears is dropped without a notification;
- a firing alert whose condition clears stays firing for ``keep_firing_for``
  from the first evaluation that found it cleared, then resolves.

Each run first sweeps the alerts nothing else would change (``sweep``). A
rule whose evaluation raises is recorded (``last_error``) and retried at its
next turn; the other rules go on.
"""

import time
from collections import defaultdict
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q, Value
from django.utils import timezone

from alerting import lifecycle, routing
from alerting.models import OPEN_STATUSES, Alert, AlertRule, AlertStatus
from alerting.prometheus import RULE_EVALUATION
from alerting.rules import KINDS
from monitoring.models import Agent, AgentState
from omoi_console.foundation import bulk

log = structlog.get_logger(__name__)

# Rules claimed per round trip; a worker claims again until none is due. Large, so
# rules that read the same rows are evaluated together (``shared_matches``).
CLAIM_BATCH = 2000
# Rules whose alert changes are written in one transaction, together (``Changes``).
CHANGE_BATCH = 100
# Alerts the sweep changes per kind and run; the rest wait for the next run.
SWEEP_BATCH = 500


def evaluate_due(now: datetime | None = None, *, budget_seconds: float = 10.0) -> int:
    """Evaluate every due rule this worker can claim; how many it evaluated."""
    with routing.tree_held():
        return _evaluate_due(now, time.monotonic() + budget_seconds)


def _evaluate_due(now: datetime | None, deadline: float) -> int:
    sweep(now or timezone.now())
    done = 0
    while time.monotonic() < deadline:
        moment = now or timezone.now()
        rules = claim(moment)
        if not rules:
            break
        done += evaluate_batch(rules, moment)
    return done


def evaluate_batch(rules: list[AlertRule], now: datetime) -> int:
    """Evaluate these rules once each, as a tick does; how many it evaluated.

    The rules' reads are shared (``shared_matches``). A rule that matches nothing
    and has no open alert has nothing to change: it costs no transaction and no
    query of its own (at fleet scale that is most rules, most of the time), and the
    rules that went well are recorded together. The others' alert changes are
    written together, ``CHANGE_BATCH`` rules to a transaction; should that fail,
    each of them is evaluated again in its own transaction, so that only a broken
    rule fails, and its error is recorded.
    """
    shared, cost = shared_matches(rules, now)
    # The open alerts of all the rules, and the agents their matches name, read once.
    # Read before each rule's transaction, as it always was: whatever changed an alert
    # since (an acknowledgement, a resolution by hand) is checked again under a lock
    # where it matters (``lifecycle.resolve_many``).
    open_alerts: dict[int, list[Alert]] = defaultdict(list)
    for alert in Alert.objects.filter(rule__in=rules, status__in=OPEN_STATUSES):
        open_alerts[alert.rule_id].append(alert)
    agents = agents_named(m for found in shared.values() for m in found)
    went_well, work, alone = [], [], []
    for rule in rules:
        matches = shared.get(rule.pk)
        if matches == [] and rule.pk not in open_alerts:
            RULE_EVALUATION.labels(rule.kind).observe(cost[rule.kind])
            went_well.append(rule.pk)
        elif matches is None:
            alone.append(rule)
        else:
            work.append((rule, matches, open_alerts.get(rule.pk, [])))
    for start in range(0, len(work), CHANGE_BATCH):
        chunk = work[start : start + CHANGE_BATCH]
        began = time.perf_counter()
        try:
            with transaction.atomic():
                apply_many(chunk, now, agents)
        except Exception:
            # One rule's changes broke the chunk's: each rule again in its own
            # transaction, from its alerts as they are now, so only the broken one fails.
            log.warning("rule.changes_apart", rules=len(chunk), exc_info=True)
            alone.extend(rule for rule, _, _ in chunk)
            continue
        spent = (time.perf_counter() - began) / len(chunk)
        for rule, _, _ in chunk:
            RULE_EVALUATION.labels(rule.kind).observe(cost[rule.kind] + spent)
            went_well.append(rule.pk)
    for rule in alone:
        began = time.perf_counter()
        error = _evaluate(rule, now, shared.get(rule.pk), None, agents)
        RULE_EVALUATION.labels(rule.kind).observe(cost[rule.kind] + time.perf_counter() - began)
        if error:
            _record(rule, now, error)
        else:
            went_well.append(rule.pk)
    # Claimed rules already say when they were evaluated (``claim``): only an error that
    # cleared is left to write for them.
    unrecorded = {
        rule.pk for rule in rules if rule.last_evaluated_at != now or rule.last_error
    }.intersection(went_well)
    AlertRule.objects.filter(pk__in=unrecorded).update(last_evaluated_at=now, last_error="")
    return len(rules)


def shared_matches(rules: list[AlertRule], now: datetime) -> tuple[dict[int, list], dict]:
    """What the rules match now, by rule id, each kind evaluating its rules together so
    rules that read the same rows read them once; and each kind's cost per rule in
    seconds (its share of those reads). A kind that fails here leaves its rules out:
    ``evaluate_rule`` evaluates them one by one, and records the error of the one
    that is broken."""
    by_kind: dict[str, list[AlertRule]] = {}
    for rule in rules:
        by_kind.setdefault(rule.kind, []).append(rule)
    found, cost = {}, {}
    for name, members in by_kind.items():
        began = time.perf_counter()
        try:
            found.update(KINDS[name].evaluate_many(members, now))
        except Exception:
            log.warning("rule.shared_evaluation_failed", kind=name, rules=len(members))
        cost[name] = (time.perf_counter() - began) / len(members)
    return found, cost


def sweep(now: datetime) -> int:
    """Close or wake the alerts nothing else would: how many it changed.

    An acknowledgement that expired fires its alert again. A firing alert
    nobody acknowledged in time escalates one level. A held-back alert whose
    silence ended, or whose inhibiting alert resolved, is notified. An alert whose rule
    was disabled, or whose agent was retired or deleted, is resolved with that
    reason: nothing would ever clear it otherwise.
    """
    changed = 0
    expired = Alert.objects.filter(
        status=AlertStatus.ACKNOWLEDGED, ack_expires_at__lte=now
    ).select_related("rule")
    for alert in expired[:SWEEP_BATCH]:
        lifecycle.unacknowledge_alert(alert, "expiry", reason="acknowledgement expired")
        changed += 1
    disabled = Alert.objects.filter(status__in=OPEN_STATUSES, rule__enabled=False)
    changed += _close(list(disabled.select_related("rule")[:SWEEP_BATCH]), "rule disabled", now)
    changed += escalate(now)
    held = Alert.objects.filter(status__in=OPEN_STATUSES).exclude(suppressed_by="")
    for alert in held.select_related("rule")[:SWEEP_BATCH]:
        changed += lifecycle.release(alert, now)
    about_agents = {
        pk: by_id or by_metric_label
        for pk, by_id, by_metric_label in Alert.objects.filter(status__in=OPEN_STATUSES)
        .filter(Q(labels__has_key="agent_id") | Q(labels__has_key="agent"))
        .order_by("id")
        .values_list("pk", "labels__agent_id", "labels__agent")[:SWEEP_BATCH]
    }
    if about_agents:
        states = dict(
            Agent.objects.filter(pk__in=set(about_agents.values())).values_list("pk", "state")
        )
        gone = {
            pk: "agent deleted" if agent not in states else "agent retired"
            for pk, agent in about_agents.items()
            if states.get(agent, AgentState.TERMINATED) == AgentState.TERMINATED
        }
        closing = list(Alert.objects.filter(pk__in=gone).select_related("rule"))
        for reason in sorted(set(gone.values())):
            changed += _close([a for a in closing if gone[a.pk] == reason], reason, now)
    return changed


def escalate(now: datetime) -> int:
    """Raise the level of firing alerts nobody acknowledged in time; how many it raised."""
    delays = {s: d for s, d in settings.ALERT_ESCALATE_AFTER.items() if d > 0}
    if not delays:
        return 0
    candidates = Alert.objects.filter(
        status=AlertStatus.FIRING,
        severity__in=delays,
        escalation_level__lt=settings.ALERT_MAX_ESCALATION,
        suppressed_by="",  # silenced or inhibited: nobody was asked to acknowledge it
    ).select_related("rule")
    raised = 0
    for alert in candidates[:SWEEP_BATCH]:
        # From its last escalation, or from when people were last asked to act on it.
        since = max(
            moment
            for moment in (alert.escalated_at, alert.announced_at, alert.fired_at, alert.started_at)
            if moment is not None
        )
        if now - since >= timedelta(seconds=delays[alert.severity]):
            lifecycle.escalate_alert(alert, now)
            raised += 1
    return raised


def _close(alerts: list[Alert], reason: str, now: datetime) -> int:
    """Close alerts nothing will clear (pending ones dropped unannounced); how many."""
    lifecycle.drop_pending_many([a for a in alerts if a.status == AlertStatus.PENDING], now)
    lifecycle.resolve_many([a for a in alerts if a.status != AlertStatus.PENDING], reason=reason)
    return len(alerts)


def claim(now: datetime) -> list[AlertRule]:
    """Take a batch of due rules and move their next evaluation on (the lease)."""
    timed = [name for name, kind in KINDS.items() if not kind.event_driven]
    with transaction.atomic():
        rules = list(
            AlertRule.objects.select_for_update(skip_locked=True)
            .filter(enabled=True, kind__in=timed, next_evaluation_at__lte=now)
            # Rules that read the same rows stay in one batch (``shared_matches``).
            .order_by("next_evaluation_at", "metric", "window", "matchers", "group_by", "pk")[
                :CLAIM_BATCH
            ]
        )
        # The evaluation's time is written with the lease: one UPDATE for both.
        AlertRule.objects.filter(pk__in=[rule.pk for rule in rules]).update(
            next_evaluation_at=ExpressionWrapper(
                Value(now) + F("evaluate_every"), output_field=DateTimeField()
            ),
            last_evaluated_at=now,
        )
    for rule in rules:
        rule.last_evaluated_at = now
    return rules


def evaluate_rule(rule: AlertRule, now: datetime) -> None:
    """One evaluation of one rule on its own, applied to its alerts in one transaction
    and recorded on the rule."""
    with RULE_EVALUATION.labels(rule.kind).time():
        error = _evaluate(rule, now)
    _record(rule, now, error)


def _evaluate(
    rule: AlertRule,
    now: datetime,
    matches: list | None = None,
    open_alerts: list[Alert] | None = None,
    agents: dict | None = None,
) -> str:
    """Apply what the rule matches (``matches``: found already, with its neighbours)
    to its alerts in one transaction; the error if it failed, else empty."""
    try:
        with transaction.atomic():
            if matches is None:
                matches = rule.rule_kind.evaluate(rule, now)
            apply(rule, matches, now, open_alerts, agents)
    except Exception as exc:  # a broken rule must not stop the others
        log.exception("rule.evaluation_failed", rule=rule.name)
        return f"{type(exc).__name__}: {exc}"[:2000]
    return ""


def _record(rule: AlertRule, now: datetime, error: str) -> None:
    AlertRule.objects.filter(pk=rule.pk).update(last_evaluated_at=now, last_error=error)


def agents_named(matches, known: dict | None = None) -> dict[str, dict]:
    """The owner and role of each agent a match's ``agent`` label names, by agent id:
    ``known`` ones as they are, the others read in one query."""
    known = dict(known or {})
    missing = sorted({m.labels["agent"] for m in matches if m.labels.get("agent")} - set(known))
    for start in range(0, len(missing), 10_000):
        chunk = missing[start : start + 10_000]
        rows = Agent.objects.filter(pk__in=chunk).values_list("pk", "owner", "role")
        known.update({pk: {"owner": owner, "role": role} for pk, owner, role in rows})
    return known


def with_agent_labels(matches, agents: dict | None = None) -> list[dict]:
    """Each match's labels, plus the owner and role of the agent a metric's ``agent``
    label names (``agents``: read already, else one query for all), so routes can send
    a team its own agents' alerts."""
    known = agents_named(matches, agents)
    return [{**known.get(m.labels.get("agent"), {}), **m.labels} for m in matches]


def apply(
    rule: AlertRule,
    matches,
    now: datetime,
    open_alerts: list[Alert] | None = None,
    agents: dict | None = None,
) -> None:
    """Move the rule's alerts to what the evaluation found (``open_alerts``: the rule's
    open alerts, read already; else read here)."""
    if open_alerts is None:
        open_alerts = list(Alert.objects.filter(rule=rule, status__in=OPEN_STATUSES))
    apply_many([(rule, matches, open_alerts)], now, agents)


class Changes:
    """What the evaluations of a batch change, gathered rule by rule (``plan``) and
    written together (``write``): each kind of change is a few statements for all the
    rules' alerts, however many rules and alerts changed."""

    def __init__(self):
        self.firing_new, self.pending_new = [], []  # (rule, labels, value)
        self.firing, self.moved, self.dropped, self.cleared, self.resolving = [], [], [], [], []

    def plan(self, rule: AlertRule, matches, open_alerts: list[Alert], agents: dict, now):
        wanted = {}
        for match, found in zip(matches, with_agent_labels(matches, agents), strict=True):
            labels = {**rule.labels, **found}
            wanted[lifecycle.fingerprint(rule.name, labels)] = (labels, match.value)
        open_now = {}
        for alert in open_alerts:
            alert.rule = rule  # the rule at hand, not one more copy read per alert
            open_now[alert.fingerprint] = alert
        # Without ``for``, a new alert fires at once: written firing, never pending first.
        new = self.firing_new if rule.for_duration.total_seconds() <= 0 else self.pending_new
        for key, (labels, value) in wanted.items():
            alert = open_now.get(key)
            if alert is None:
                new.append((rule, labels, value))
                continue
            summary = lifecycle.render_template(rule.summary, alert.labels, value)[:500]
            changed = (value, summary, None) != (alert.value, alert.summary, alert.cleared_at)
            alert.value, alert.summary, alert.cleared_at = value, summary, None
            if alert.status == AlertStatus.PENDING and now - alert.started_at >= rule.for_duration:
                self.firing.append(alert)
            elif changed:
                self.moved.append(alert)
        for key, alert in open_now.items():
            if key in wanted:
                continue
            if alert.status == AlertStatus.PENDING:
                self.dropped.append(alert)
                continue
            if alert.cleared_at is None:
                alert.cleared_at = now
                self.cleared.append(alert)
            if now - alert.cleared_at >= rule.keep_firing_for:
                self.resolving.append(alert)

    def write(self, now: datetime) -> None:
        lifecycle.open_many(self.firing_new, now, firing=True)
        lifecycle.open_many(self.pending_new, now)
        lifecycle.promote_many(self.firing, now)
        # Alerts that still match and keep their state are written only when their value
        # moved (or the condition is back): most of them, most ticks, cost nothing, as a
        # rollup minute lasts several evaluations.
        bulk.update_rows(
            Alert,
            ["value", "summary", "cleared_at"],
            [(alert.pk, alert.value, alert.summary, None) for alert in self.moved],
        )
        lifecycle.drop_pending_many(self.dropped, now)
        resolving = {alert.pk for alert in self.resolving}
        kept = [alert.pk for alert in self.cleared if alert.pk not in resolving]
        bulk.update_ids(Alert, kept, cleared_at=now)
        lifecycle.resolve_many(self.resolving, reason="condition cleared")


def apply_many(work, now: datetime, agents: dict | None = None) -> None:
    """Move the alerts of several rules, given (rule, matches, its open alerts), to what
    their evaluations found, written together (``Changes``)."""
    changes = Changes()
    agents = agents_named((m for _, matches, _ in work for m in matches), agents)
    for rule, matches, open_alerts in work:
        changes.plan(rule, matches, open_alerts, agents, now)
    changes.write(now)
