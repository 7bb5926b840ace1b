"""Who listens to which event.

Apps register handlers in ``AppConfig.ready()``. A handler gets the Event row
and must be safe to run inside a transaction: the dispatcher wraps it with its
receipt, so its writes and the receipt commit or roll back together.
"""

from collections.abc import Callable
from dataclasses import dataclass

ALL = "*"


@dataclass(frozen=True)
class Subscription:
    handler_id: str
    event_name: str
    func: Callable


_subscriptions: dict[str, Subscription] = {}


def subscribe(event_name: str, handler_id: str | None = None):
    """Decorator: run the function for every event named ``event_name`` ("*" for all)."""

    def register(func: Callable) -> Callable:
        hid = handler_id or f"{func.__module__}.{func.__qualname__}"
        existing = _subscriptions.get(hid)
        if existing is not None and existing.func is not func:
            raise ValueError(f"handler id {hid!r} is already taken")
        _subscriptions[hid] = Subscription(hid, event_name, func)
        return func

    return register


def unsubscribe(handler_id: str) -> None:
    _subscriptions.pop(handler_id, None)


def subscribers_for(event_name: str) -> list[Subscription]:
    return [s for s in _subscriptions.values() if s.event_name in (event_name, ALL)]
