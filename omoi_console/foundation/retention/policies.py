"""What may be pruned, kind by kind, and how one bounded batch of it goes.

Apps register their policies in ``AppConfig.ready()``, as they subscribe event
handlers: the foundation knows no app's models. A policy is anything with a
``name``, ``prune_batch(now, batch_size) -> Pruned`` and ``count(now)``, so a
kind whose storage is not rows to delete (partitions to drop, files) registers
a ``CallableRetention`` around its own functions; ``RowRetention`` covers rows.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from django.apps import apps
from django.conf import settings
from django.db import models
from django.db.models import CASCADE, PROTECT, RESTRICT, Q


@dataclass(frozen=True)
class Pruned:
    """What one batch removed, per table label, and whether more may be due now."""

    removed: Mapping[str, int] = field(default_factory=dict)
    more: bool = False


class RetentionPolicy(Protocol):
    name: str

    def prune_batch(self, now: datetime, batch_size: int) -> Pruned:
        """Remove at most ``batch_size`` of the oldest prunable units, in one short transaction."""

    def count(self, now: datetime) -> dict[str, int]:
        """What a prune would remove now, per table label; changes nothing."""


@dataclass(frozen=True)
class CallableRetention:
    """A policy made of two functions, for storage that is not pruned row by row."""

    name: str
    prune: Callable[[datetime, int], Pruned]
    counter: Callable[[datetime], dict[str, int]]

    def prune_batch(self, now: datetime, batch_size: int) -> Pruned:
        return self.prune(now, batch_size)

    def count(self, now: datetime) -> dict[str, int]:
        return self.counter(now)


def days_kept(setting: str) -> Callable[[], timedelta | None]:
    """Retention read from a settings name, in days, at run time; 0 keeps forever."""

    def keep() -> timedelta | None:
        days = getattr(settings, setting)
        return timedelta(days=days) if days else None

    return keep


@dataclass(frozen=True)
class RowRetention:
    """Delete rows of ``model`` older than a retention, oldest first, a batch at a time.

    ``age_field`` orders the rows and must lead an index, so a batch reads only
    the rows it deletes. ``where`` (a Q, or a function of now returning one)
    says which rows may go at all: finished ones, never work in progress.
    ``keep`` gives the retention (None: keep forever); ``floor``, if given, is an
    age below which no row goes whatever the setting, for rows that something
    else still reads for a while (deduplication keys, cooldowns).

    Each batch deletes at most ``batch_size`` rows, chosen by an indexed
    subquery, in one short transaction: a single DELETE when nothing references
    the rows. Rows that reference them with CASCADE (an event's receipts) make
    Django read the batch's ids once and delete those rows first, in statements
    bounded by the batch. A PROTECT reference is refused when the policy is
    registered, since every prune would fail on it.
    """

    name: str
    model: type[models.Model]
    age_field: str
    keep: Callable[[], timedelta | None]
    where: Q | Callable[[datetime], Q] = field(default_factory=Q)
    floor: Callable[[], timedelta] | None = None

    def cutoff(self, now: datetime) -> datetime | None:
        keep = self.keep()
        if keep is None:
            return None
        if self.floor is not None:
            keep = max(keep, self.floor())
        return now - keep

    def prunable(self, now: datetime) -> models.QuerySet | None:
        cutoff = self.cutoff(now)
        if cutoff is None:
            return None
        where = self.where(now) if callable(self.where) else self.where
        return self.model._base_manager.filter(where, **{f"{self.age_field}__lt": cutoff})

    def oldest(self, now: datetime, batch_size: int) -> models.QuerySet | None:
        """The ids of the next batch: the oldest prunable rows, read through the age index."""
        rows = self.prunable(now)
        if rows is None:
            return None
        # Ordered by the age field alone, as the index is: the model's default
        # ordering (or a tie-breaker) would make the database sort instead.
        return rows.order_by(self.age_field).values("pk")[:batch_size]

    def prune_batch(self, now: datetime, batch_size: int) -> Pruned:
        oldest = self.oldest(now, batch_size)
        if oldest is None:
            return Pruned()
        # only("pk"): when Django must collect the rows (to cascade), it reads their ids alone.
        _, per_model = self.model._base_manager.filter(pk__in=oldest).only("pk").delete()
        removed = {label_of(apps.get_model(label)): n for label, n in per_model.items() if n}
        gone = removed.get(label_of(self.model), 0)
        return Pruned(removed, more=gone >= batch_size)

    def count(self, now: datetime) -> dict[str, int]:
        rows = self.prunable(now)
        if rows is None:
            return {}
        counts = {label_of(self.model): rows.count()}
        for relation in cascading_relations(self.model):
            related = relation.related_model._base_manager.filter(
                **{f"{relation.field.name}__in": rows.values("pk")}
            )
            counts[label_of(relation.related_model)] = related.count()
        return counts

    def check(self) -> None:
        """Refuse a model whose rows something protects: its prune would fail every time."""
        for relation in self.model._meta.related_objects:
            if relation.on_delete in (PROTECT, RESTRICT):
                raise ValueError(
                    f"retention {self.name!r}: {relation.related_model.__name__}."
                    f"{relation.field.name} protects {self.model.__name__} rows"
                )


def cascading_relations(model: type[models.Model]) -> list:
    return [relation for relation in model._meta.related_objects if relation.on_delete is CASCADE]


def label_of(model: type[models.Model]) -> str:
    return str(model._meta.verbose_name_plural)


_policies: dict[str, RetentionPolicy] = {}


def register(policy: RetentionPolicy) -> RetentionPolicy:
    """Add a policy; call from ``AppConfig.ready()``. A name belongs to one policy."""
    existing = _policies.get(policy.name)
    if existing is not None and existing is not policy:
        raise ValueError(f"retention policy {policy.name!r} is already registered")
    check = getattr(policy, "check", None)
    if check is not None:
        check()
    _policies[policy.name] = policy
    return policy


def unregister(name: str) -> None:
    _policies.pop(name, None)


def policies() -> list[RetentionPolicy]:
    """Every registered policy, in registration order."""
    return list(_policies.values())
