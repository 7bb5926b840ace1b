"""The periodic work of metric storage: rollups and partitions ahead.

What is past retention (old partitions, batch keys) goes with the retention
policies of ``monitoring.retention``.
"""

import structlog
from django.utils import timezone

from monitoring import partitions, rollups

log = structlog.get_logger(__name__)


def roll_up(now=None) -> int:
    done = rollups.roll_up(now)
    if done:
        log.debug("metrics.rolled_up", minutes=done)
    return done


def create_partitions_ahead(now=None) -> None:
    partitions.ensure_ahead(now or timezone.now())
