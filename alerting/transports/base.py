"""The Transport interface every channel implements, and the registry of channels by kind.

A channel is one module in this package that defines a ``Transport`` subclass
decorated with ``@register``; ``alerting.transports`` imports every module of
the package, so a new channel needs no edit anywhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from django.core.exceptions import ValidationError
from django.utils import timezone

if TYPE_CHECKING:
    from alerting.models import Notification, Receiver


class TransportError(Exception):
    """A failed delivery. ``permanent``: trying again cannot help (a 4xx, a refused
    address). ``retry_after``: seconds the receiver asked us to wait, if it said so."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class Transport:
    """One delivery channel. Subclasses set ``kind``, validate their configuration
    and send one notification, raising TransportError on failure."""

    kind: ClassVar[str]
    label: ClassVar[str]
    # Configuration keys never shown back (API, admin, target, logs).
    secret_keys: ClassVar[frozenset[str]] = frozenset()
    # Whether its notifications wait for their group (``alerting.grouping``); a channel
    # that groups by itself, or that people watch live, sends each one at once.
    groups: ClassVar[bool] = True

    def validate_config(self, config: dict) -> dict:
        """The cleaned configuration; ValidationError mapping each bad key to its message."""
        if not isinstance(config, dict):
            raise ValidationError({"config": "must be an object"})
        unknown = sorted(set(config) - set(self.config_keys()))
        if unknown:
            raise ValidationError({key: "unknown setting for this kind" for key in unknown})
        return {}

    def config_keys(self) -> tuple[str, ...]:
        return ()

    def addressable(self, receiver: Receiver) -> bool:
        """Whether the receiver has somewhere to deliver today (e.g. email recipients)."""
        return True

    def target(self, receiver: Receiver) -> str:
        """Where a notification goes, for people to read: never a secret."""
        return receiver.name

    def send(self, notification: Notification) -> None:
        raise NotImplementedError

    @classmethod
    def instance(cls):
        """The registered instance of this transport."""
        return REGISTRY[cls.kind]


REGISTRY: dict[str, Transport] = {}


def register(cls: type[Transport]) -> type[Transport]:
    """Class decorator: make a transport available under its ``kind``."""
    if cls.kind in REGISTRY:
        raise RuntimeError(f"two transports claim the kind {cls.kind!r}")
    REGISTRY[cls.kind] = cls()
    return cls


def transport_for(kind: str) -> Transport:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ValidationError({"kind": f"unknown kind {kind!r}"}) from None


def kind_choices() -> list[tuple[str, str]]:
    return sorted((kind, transport.label) for kind, transport in REGISTRY.items())


def members(notification: Notification) -> list[tuple]:
    """(alert, "firing" | "resolved") for every alert a notification tells of: those
    of its group that delivery sent together (``delivery.members``), else its own."""
    found = getattr(notification, "members", None)
    if found:
        return found
    status = "resolved" if notification.kind == "resolved" else "firing"
    return [(notification.alert, status)]


def headline(notification: Notification) -> tuple[str, list[tuple]]:
    """ "FIRING", "RESOLVED" or "FIRING:3" (several alerts), and the alerts told."""
    told = members(notification)
    state = "firing" if any(status == "firing" for _, status in told) else "resolved"
    if notification.kind in ("repeat", "escalated"):
        state = notification.kind
    firing = sum(1 for _, status in told if status == "firing")
    count = firing if state != "resolved" else len(told)
    return (f"{state.upper()}:{count}" if len(told) > 1 else state.upper()), told


def describe(notification: Notification) -> tuple[str, str]:
    """Subject and body shared by the text channels: one section per alert told."""
    state, told = headline(notification)
    alert = told[0][0]
    subject = f"[{state}] {alert.rule.name}: {alert.summary} ({alert.severity})"
    if len(told) > 1:
        subject = f"[{state}] {alert.rule.name} and {len(told) - 1} more: {alert.summary}"
    sections = []
    for item, status in told:
        labels = "\n".join(f"  {k}={v}" for k, v in sorted(item.labels.items()))
        when = item.resolved_at if status == "resolved" else item.fired_at
        sections.append(
            f"{item.summary}\n\nstatus: {status}\nseverity: {item.severity}\n"
            f"at: {(when or timezone.now()).isoformat()}\nlabels:\n{labels}\n"
            f"alert id: {item.pk}\ntrace id: {item.trace_id or '-'}\n"
        )
    return subject, "\n".join(sections)


def require_text(config: dict, key: str, *, max_length: int = 2000) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError({key: "required, a non-empty string"})
    if len(value) > max_length:
        raise ValidationError({key: f"at most {max_length} characters"})
    return value.strip()
