"""Model changes that make cached ingest entries wrong, announced after commit.

Signals catch every way in (services, admin, shell). Bulk ``QuerySet.update``
sends no signal: services that use it call ``invalidate_on_commit`` themselves.
"""

from django.db.models.signals import post_delete, post_save

from monitoring.ingest.invalidation import invalidate_on_commit
from monitoring.models import Agent, AgentCommand, AgentToken
from monitoring.stuck import HEARTBEAT_FIELDS

# A heartbeat's own write changes only these; no cached entry depends on them
# (a stuck agent's snapshot names its task and progress, but while it stays
# stuck its heartbeats repeat them).
LIVENESS_FIELDS = frozenset(HEARTBEAT_FIELDS)


def agent_changed(sender, instance, created=False, update_fields=None, **kwargs):
    # A new agent is in no cache (a deleted one with the same id was dropped).
    if created or (update_fields is not None and set(update_fields) <= LIVENESS_FIELDS):
        return
    invalidate_on_commit(agents=[instance.pk])


def agent_deleted(sender, instance, **kwargs):
    invalidate_on_commit(agents=[instance.pk], agent_tokens=[instance.pk])


def command_changed(sender, instance, **kwargs):
    # A queued command must leave with the agent's next heartbeat: Django's path.
    invalidate_on_commit(agents=[instance.agent_id])


def token_changed(sender, instance, created=False, **kwargs):
    if created:
        return
    invalidate_on_commit(tokens=[instance.lookup], wait=True)


def connect() -> None:
    post_save.connect(agent_changed, sender=Agent, dispatch_uid="ingest.agent_changed")
    post_delete.connect(agent_deleted, sender=Agent, dispatch_uid="ingest.agent_deleted")
    post_save.connect(command_changed, sender=AgentCommand, dispatch_uid="ingest.command_saved")
    post_delete.connect(command_changed, sender=AgentCommand, dispatch_uid="ingest.command_deleted")
    post_save.connect(token_changed, sender=AgentToken, dispatch_uid="ingest.token_saved")
    post_delete.connect(token_changed, sender=AgentToken, dispatch_uid="ingest.token_deleted")
