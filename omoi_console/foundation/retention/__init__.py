"""Retention: every kind of record that grows without bound is pruned by its own policy.

Apps register policies in ``AppConfig.ready()`` with ``register``; a periodic job
(``tasks.prune_expired``) and ``manage.py prune`` run them through ``service``.
"""

from omoi_console.foundation.retention.policies import (
    CallableRetention,
    Pruned,
    RetentionPolicy,
    RowRetention,
    days_kept,
    policies,
    register,
    unregister,
)

__all__ = [
    "CallableRetention",
    "Pruned",
    "RetentionPolicy",
    "RowRetention",
    "days_kept",
    "policies",
    "register",
    "unregister",
]
