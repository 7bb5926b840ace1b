"""The routing tree: which receivers an alert's labels lead to.

Routes are read once per call (a small table) and walked in memory. See
``Route`` for the rules, which are Alertmanager's.
"""

from alerting import matchers as matcher_text
from alerting.models import Receiver, Route


def route(labels: dict) -> list[Receiver] | None:
    """The receivers the tree gives these labels, or None when no top-level route takes them."""
    routes = list(Route.objects.filter(enabled=True).prefetch_related("receivers"))
    children: dict[int | None, list[Route]] = {}
    for node in routes:
        children.setdefault(node.parent_id, []).append(node)
    for siblings in children.values():
        siblings.sort(key=lambda node: (node.position, node.name))
    found = _descend(None, [], labels, children)
    if found is None:
        return None
    unique = {}
    for receiver in found:
        unique.setdefault(receiver.pk, receiver)
    return list(unique.values())


def _descend(parent_id, inherited: list[Receiver], labels: dict, children) -> list | None:
    """Receivers from the children of ``parent_id`` that take the labels; None if none does."""
    taken = None
    for node in children.get(parent_id, []):
        if not matcher_text.matches_all(matcher_text.parse_all(node.matchers), labels):
            continue
        own = list(node.receivers.all()) or inherited
        below = _descend(node.pk, own, labels, children)
        taken = (taken or []) + (below if below is not None else own)
        if not node.continue_matching:
            break
    return taken
