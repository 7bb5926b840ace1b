"""The routing tree: which receivers an alert's labels lead to, and how they group it.

Routes are read once per call (a small table) and walked in memory. See
``Route`` for the rules, which are Alertmanager's.
"""

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings

from alerting import matchers as matcher_text
from alerting.models import Receiver, Route

GROUPING_FIELDS = ("group_by", "group_wait", "group_interval", "repeat_interval")


@dataclass(frozen=True)
class Grouping:
    """How a route groups what it delivers: its own fields, else its parent's, else
    the settings."""

    group_by: tuple[str, ...]
    group_wait: timedelta
    group_interval: timedelta
    repeat_interval: timedelta


@dataclass(frozen=True)
class Destination:
    receiver: Receiver
    route: Route | None  # None: no route took the alert; the default receivers have it
    grouping: Grouping


def top_grouping() -> Grouping:
    """The settings: the grouping of the top of the tree and of the default receivers."""
    return Grouping(
        group_by=tuple(settings.ALERT_GROUP_BY),
        group_wait=timedelta(seconds=settings.ALERT_GROUP_WAIT_SECONDS),
        group_interval=timedelta(seconds=settings.ALERT_GROUP_INTERVAL_SECONDS),
        repeat_interval=timedelta(seconds=settings.ALERT_REPEAT_INTERVAL_SECONDS),
    )


def inherit(node: Route, parent: Grouping) -> Grouping:
    own = {name: getattr(node, name) for name in GROUPING_FIELDS}
    return Grouping(
        group_by=tuple(own["group_by"]) if own["group_by"] else parent.group_by,
        **{
            name: own[name] if own[name] is not None else getattr(parent, name)
            for name in GROUPING_FIELDS[1:]
        },
    )


_held: contextvars.ContextVar[dict | None] = contextvars.ContextVar("route_tree", default=None)


@contextmanager
def tree_held():
    """Read the tree (and the default receivers) once for everything routed inside:
    an evaluator tick or a batch of events that changes many alerts at once. A route
    edited meanwhile applies from the next tick."""
    token = _held.set({})
    try:
        yield
    finally:
        _held.reset(token)


def held(name: str, load):
    """``load()``, or what it gave earlier inside the same ``tree_held``."""
    memo = _held.get()
    if memo is None:
        return load()
    if name not in memo:
        memo[name] = load()
    return memo[name]


def _tree() -> dict[int | None, list[Route]]:
    routes = list(Route.objects.filter(enabled=True).prefetch_related("receivers"))
    children: dict[int | None, list[Route]] = {}
    for node in routes:
        children.setdefault(node.parent_id, []).append(node)
    for siblings in children.values():
        siblings.sort(key=lambda node: (node.position, node.name))
    return children


def destinations(labels: dict) -> list[Destination] | None:
    """Where the tree sends these labels, or None when no top-level route takes them."""
    children = held("tree", _tree)
    found = _descend(None, [], top_grouping(), labels, children)
    if found is None:
        return None
    unique: dict[tuple, Destination] = {}
    for destination in found:
        key = (destination.receiver.pk, destination.route.pk)
        unique.setdefault(key, destination)
    return list(unique.values())


def route(labels: dict) -> list[Receiver] | None:
    """The receivers the tree gives these labels, or None when no top-level route takes them."""
    found = destinations(labels)
    if found is None:
        return None
    unique = {}
    for destination in found:
        unique.setdefault(destination.receiver.pk, destination.receiver)
    return list(unique.values())


def escalation_of(node: Route | None) -> list[list[str]]:
    """A route's escalation levels (receiver names per level): its own, else its
    parent's; for alerts no route takes, the settings (one receiver per level)."""
    if node is None:
        return [[name] for name in settings.ALERT_ESCALATE_TO]
    while node is not None:
        if node.escalation:
            return node.escalation
        node = node.parent
    return []


def _descend(parent_id, inherited: list[Receiver], grouping: Grouping, labels: dict, children):
    """Destinations from the children of ``parent_id`` that take the labels; None if none does."""
    taken = None
    for node in children.get(parent_id, []):
        if not matcher_text.matches_all(matcher_text.parse_all(node.matchers), labels):
            continue
        own = list(node.receivers.all()) or inherited
        node_grouping = inherit(node, grouping)
        below = _descend(node.pk, own, node_grouping, labels, children)
        here = [Destination(receiver, node, node_grouping) for receiver in own]
        taken = (taken or []) + (below if below is not None else here)
        if not node.continue_matching:
            break
    return taken
