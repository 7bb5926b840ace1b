"""The periodic work of metric storage: rollups, partitions ahead, retention."""

from datetime import timedelta

import structlog
from django.conf import settings
from django.utils import timezone

from monitoring import partitions, rollups
from monitoring.models import IngestBatch

log = structlog.get_logger(__name__)
KEY_DELETE_BATCH = 5000


def roll_up(now=None) -> int:
    done = rollups.roll_up(now)
    if done:
        log.debug("metrics.rolled_up", minutes=done)
    return done


def maintain_storage(now=None) -> dict:
    """Create partitions ahead, drop what is past retention, forget old batch keys."""
    now = now or timezone.now()
    partitions.ensure_ahead(now)
    dropped = partitions.drop_expired(now)
    cutoff = now - timedelta(hours=settings.METRIC_BATCH_KEY_RETENTION_HOURS)
    keys = forget_batch_keys(cutoff)
    log.info("metrics.storage_maintained", dropped=dropped, batch_keys_forgotten=keys)
    return {**dropped, "batch_keys": keys}


def forget_batch_keys(cutoff, max_batches: int = 20) -> int:
    forgotten = 0
    for _ in range(max_batches):
        keys = list(
            IngestBatch.objects.filter(received_at__lt=cutoff)
            .order_by("received_at")
            .values_list("key", flat=True)[:KEY_DELETE_BATCH]
        )
        if not keys:
            break
        forgotten += IngestBatch.objects.filter(key__in=keys).delete()[0]
    return forgotten
