"""Who listens to which event.

Apps register handlers in ``AppConfig.ready()``. By default a handler gets one
Event row and runs inside a transaction with its receipt, so its writes and the
receipt commit or roll back together. ``batch=True`` hands it a list of events
instead (one call for a whole dispatched batch, receipts written in bulk).
``atomic=False`` runs it outside any transaction and writes the receipts after it
returns: for work that waits on the network, delivered at least once.
"""

from collections.abc import Callable
from dataclasses import dataclass

ALL = "*"


@dataclass(frozen=True)
class Subscription:
    handler_id: str
    event_name: str
    func: Callable
    batch: bool = False
    atomic: bool = True

    def wants(self, event_name: str) -> bool:
        return self.event_name in (event_name, ALL)


_subscriptions: dict[str, Subscription] = {}


def subscribe(
    event_name: str, handler_id: str | None = None, *, batch: bool = False, atomic: bool = True
):
    """Decorator: run the function for every event named ``event_name`` ("*" for all)."""

    def register(func: Callable) -> Callable:
        hid = handler_id or f"{func.__module__}.{func.__qualname__}"
        existing = _subscriptions.get(hid)
        if existing is not None and existing.func is not func:
            raise ValueError(f"handler id {hid!r} is already taken")
        _subscriptions[hid] = Subscription(hid, event_name, func, batch=batch, atomic=atomic)
        return func

    return register


def unsubscribe(handler_id: str) -> None:
    _subscriptions.pop(handler_id, None)


def subscribers_for(event_name: str) -> list[Subscription]:
    return [s for s in _subscriptions.values() if s.wants(event_name)]


def subscriptions() -> list[Subscription]:
    """Every subscription, in the order they were registered."""
    return list(_subscriptions.values())
