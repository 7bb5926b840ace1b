"""Escalation chains: who is told, level by level, when the watchdog gives up on an agent.

The watchdog's escalation fires the ``remediation`` alert (alerting does that
on ``watchdog.escalated``); the chain of the action's policy then tells its
levels about that alert as alerting's own escalation does (``ESCALATED``
notifications, each receiver once per alert): level 1 ``after`` seconds from
the escalation (0: at once), each next level ``after`` seconds from the one
before, until the agent is healthy again or someone acknowledged (or resolved)
the alert. The walk is a periodic job over ``escalation_next_at``, so it
survives a restart of the console.
"""

from datetime import timedelta

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from alerting.delivery import create_notification
from alerting.models import Alert, AlertStatus, NotificationKind, Receiver, RuleKind
from monitoring.models import HEALTHY_STATES
from watchdog.models import RemediationAction

log = structlog.get_logger(__name__)

MAX_LEVELS = 10
MAX_AFTER_SECONDS = 7 * 86400
LEVEL_KEYS = frozenset({"receivers", "after", "guardian"})
# How long a level waits for alerting to raise the alert it tells of.
ALERT_GRACE = timedelta(seconds=60)
CLAIM_BATCH = 100


def level_problems(levels) -> list[str]:
    """What is wrong with a chain's levels; empty when they are valid."""
    if not isinstance(levels, list) or not levels:
        return ['a non-empty list of levels such as [{"receivers": ["oncall"], "after": 0}]']
    if len(levels) > MAX_LEVELS:
        return [f"at most {MAX_LEVELS} levels"]
    problems, named = [], set()
    for number, level in enumerate(levels, 1):
        if not isinstance(level, dict):
            problems.append(f"level {number}: an object with receivers, after and guardian")
            continue
        unknown = sorted(set(level) - LEVEL_KEYS)
        if unknown:
            problems.append(f"level {number}: unknown key(s) {', '.join(unknown)}")
        receivers = level.get("receivers", [])
        guardian = level.get("guardian", False)
        if not isinstance(guardian, bool):
            problems.append(f"level {number}: guardian is true or false")
        if not isinstance(receivers, list) or not all(isinstance(r, str) for r in receivers):
            problems.append(f"level {number}: receivers is a list of receiver names")
        elif not receivers and guardian is not True:
            problems.append(f"level {number}: names no receiver and is not a guardian level")
        else:
            named |= set(receivers)
        after = level.get("after", 0)
        if type(after) is not int or not 0 <= after <= MAX_AFTER_SECONDS:
            problems.append(f"level {number}: after is whole seconds from 0 to {MAX_AFTER_SECONDS}")
        if guardian is True and not settings.WATCHDOG_GUARDIAN_RECEIVER:
            problems.append(
                f"level {number}: a guardian level needs OMOI_WATCHDOG_GUARDIAN_RECEIVER"
            )
    if settings.WATCHDOG_GUARDIAN_RECEIVER and any(
        isinstance(level, dict) and level.get("guardian") is True for level in levels
    ):
        named.add(settings.WATCHDOG_GUARDIAN_RECEIVER)
    unknown = named - set(Receiver.objects.filter(name__in=named).values_list("name", flat=True))
    if unknown:
        problems.append(f"no receiver named {', '.join(sorted(unknown))}")
    return problems


def level_receivers(level: dict) -> list[str]:
    names = list(level.get("receivers", []))
    if level.get("guardian") and settings.WATCHDOG_GUARDIAN_RECEIVER:
        names.append(settings.WATCHDOG_GUARDIAN_RECEIVER)
    return names


def start(action: RemediationAction, now) -> None:
    """The action escalated: its policy's chain (if any) starts with level 1."""
    chain = action.policy.escalation_chain
    if chain is None or not chain.levels:
        return
    due = now + timedelta(seconds=chain.levels[0].get("after", 0))
    RemediationAction.objects.filter(pk=action.pk).update(
        escalation_level=0, escalation_next_at=due
    )
    action.escalation_level, action.escalation_next_at = 0, due


def advance_escalations(now=None, limit: int = CLAIM_BATCH) -> int:
    """The periodic job: tell the next level of every chain that is due; how many were told."""
    now = now or timezone.now()
    due = RemediationAction.objects.filter(escalation_next_at__lte=now).order_by(
        "escalation_next_at"
    )
    if not due.values_list("pk", flat=True)[:1]:
        return 0
    told = 0
    with transaction.atomic():
        claimed = due.select_for_update(skip_locked=True, of=("self",)).select_related(
            "agent", "policy__escalation_chain"
        )[:limit]
        for action in claimed:
            told += _walk(action, now)
    return told


def _walk(action: RemediationAction, now) -> int:
    chain = action.policy.escalation_chain
    levels = chain.levels if chain else []
    alert = remediation_alert(action)
    stop = ""
    if action.agent.state in HEALTHY_STATES:
        stop = "the agent recovered"
    elif action.escalation_level >= len(levels):
        stop = "the chain is done"
    elif alert is None:
        if now - (action.finished_at or now) < ALERT_GRACE:
            return 0  # alerting has not raised it yet: the next run looks again
        stop = "no firing remediation alert"
    elif alert.status != AlertStatus.FIRING:
        stop = f"the alert is {alert.status}"
    if stop:
        _note(action, now, f"escalation stopped at level {action.escalation_level}: {stop}")
        action.escalation_next_at = None
        action.save(update_fields=["escalation_next_at", "history"])
        return 0
    level = levels[action.escalation_level]
    names = level_receivers(level)
    for receiver in Receiver.objects.filter(name__in=names, enabled=True).order_by("name"):
        if receiver.transport.addressable(receiver):
            create_notification(alert, NotificationKind.ESCALATED, receiver)
    action.escalation_level += 1
    nxt = action.escalation_level
    action.escalation_next_at = (
        now + timedelta(seconds=levels[nxt].get("after", 0)) if nxt < len(levels) else None
    )
    _note(action, now, f"escalation level {nxt} told {', '.join(names)} (alert {alert.pk})")
    action.save(update_fields=["escalation_level", "escalation_next_at", "history"])
    log.warning(
        "watchdog.escalation_level",
        action_id=action.pk,
        agent_id=action.agent_id,
        level=nxt,
        receivers=names,
        alert_id=alert.pk,
    )
    return 1


def remediation_alert(action: RemediationAction) -> Alert | None:
    """The open ``remediation`` alert alerting raised for this agent and policy."""
    return (
        Alert.objects.filter(
            rule__kind=RuleKind.REMEDIATION,
            labels__agent_id=action.agent_id,
            labels__policy=action.policy.name,
        )
        .exclude(status=AlertStatus.RESOLVED)
        .order_by("-pk")
        .first()
    )


def _note(action, now, detail: str) -> None:
    action.history = [
        *action.history,
        {"escalation": True, "at": now.isoformat(), "detail": detail},
    ]
