"""One prune run over every registered policy, bounded in rows, batches and time.

The periodic job and ``manage.py prune`` both call ``prune``. A run takes one
batch of each kind in turn, so a large backlog of one kind cannot starve the
others, and stops a kind when it has nothing more due, has had its batches, or
the run's time is up; the next run carries on where this one stopped.
"""

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from django.conf import settings
from django.utils import timezone

from omoi_console.foundation.retention.policies import RetentionPolicy, policies

log = structlog.get_logger(__name__)


@dataclass
class KindReport:
    """What one run did to one kind: rows removed per table, batches, and whether more is due."""

    removed: Counter = field(default_factory=Counter)
    batches: int = 0
    more: bool = False
    failed: bool = False


def chosen(kinds: Iterable[str] | None) -> list[RetentionPolicy]:
    """The registered policies named in ``kinds`` (all when None); ValueError names unknown ones."""
    registered = policies()
    if kinds is None:
        return registered
    wanted = set(kinds)
    unknown = wanted - {policy.name for policy in registered}
    if unknown:
        known = ", ".join(policy.name for policy in registered)
        raise ValueError(f"unknown retention kind {', '.join(sorted(unknown))}; known: {known}")
    return [policy for policy in registered if policy.name in wanted]


def prune(
    *,
    now: datetime | None = None,
    kinds: Iterable[str] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    seconds: float | None = None,
) -> dict[str, KindReport]:
    """Prune what has outlived its retention, in bounded batches; report per kind.

    Every batch is its own short transaction, so nothing is held across the
    run: call it outside ``atomic``. A kind whose batch fails is logged and left
    for the next run; the other kinds go on.
    """
    now = now or timezone.now()
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    max_batches = max_batches or settings.RETENTION_MAX_BATCHES
    deadline = time.monotonic() + (seconds or settings.RETENTION_RUN_SECONDS)
    active = chosen(kinds)
    reports = {policy.name: KindReport() for policy in active}
    while active and time.monotonic() < deadline:
        for policy in list(active):
            report = reports[policy.name]
            if not _one_batch(policy, report, now, batch_size) or report.batches >= max_batches:
                active.remove(policy)
            if time.monotonic() >= deadline:
                break
    for policy in active:
        # Out of time before this kind was done (or reached at all).
        reports[policy.name].more = True
    for name, report in reports.items():
        if report.removed or report.failed:
            log.info(
                "retention.pruned",
                kind=name,
                removed=dict(report.removed),
                batches=report.batches,
                more=report.more,
                failed=report.failed,
            )
    return reports


def _one_batch(policy: RetentionPolicy, report: KindReport, now, batch_size: int) -> bool:
    """Run one batch; True when the kind may have more due now."""
    try:
        pruned = policy.prune_batch(now, batch_size)
    except Exception:
        log.exception("retention.batch_failed", kind=policy.name)
        report.failed = True
        return False
    report.batches += 1
    report.removed.update(pruned.removed)
    report.more = pruned.more
    return pruned.more


def would_prune(
    *, now: datetime | None = None, kinds: Iterable[str] | None = None
) -> dict[str, dict[str, int]]:
    """What a prune would remove now, per kind and table, without removing anything."""
    now = now or timezone.now()
    return {policy.name: policy.count(now) for policy in chosen(kinds)}
