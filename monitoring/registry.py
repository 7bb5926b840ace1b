"""Our mirror of the fleet's registry: what each agent is, never what state it is in.

``update_agent`` edits one agent's metadata (the API and the admin call it);
``sync_registry`` upserts many at once, the seam through which an external
registry (a watchdog adapter, an event-bus consumer) keeps the mirror in step.
Both validate everything before they write anything, and neither touches an
agent's state: that changes only through heartbeats, the monitor's checks and
the transition functions.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import structlog
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from monitoring.ingest.invalidation import invalidate_on_commit
from monitoring.models import Agent, AgentState, AgentTransition
from monitoring.services import miss_deadline
from monitoring.stuck import stuck_deadline

log = structlog.get_logger(__name__)

# What the registry owns of an agent.
METADATA_FIELDS = (
    "name",
    "role",
    "capabilities",
    "owner",
    "version",
    "labels",
    "heartbeat_interval",
)
# Changes that move an agent's deadlines (its interval and stuck threshold
# follow its role unless it has its own).
TIMING_FIELDS = frozenset({"role", "heartbeat_interval"})
MAX_RECORDS = 10_000


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def update_agent(agent: Agent, changes: Mapping, *, actor: str) -> Agent:
    """Edit ``agent``'s registry metadata; return it as stored.

    ``changes`` maps field names of ``METADATA_FIELDS`` to new values. Raises
    ValidationError (field -> messages) and stores nothing when a name is not a
    registry field or a value is invalid. A new role or interval moves the
    agent's pending deadlines at once.
    """
    unknown = sorted(set(changes) - set(METADATA_FIELDS))
    if unknown:
        raise ValidationError({name: [_not_a_field()] for name in unknown})
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        changed = _apply(agent, changes)
        if changed:
            agent.save(update_fields=changed)
    if changed:
        log.info("agent.registry_updated", agent_id=agent.pk, fields=changed, actor=actor)
    return agent


def sync_registry(records: Iterable[Mapping], *, actor: str) -> SyncResult:
    """Create or update many agents' metadata from registry records, all or nothing.

    Each record is a mapping with ``id`` and any of ``METADATA_FIELDS``; a field
    a record leaves out is left as it is (``role`` is required for a new
    agent). New agents start SPAWNING with their first deadline from now, as if
    registered, but get no ingest token (issue one through the API or
    ``manage.py agents token``). Existing agents keep their state, whatever it
    is. Costs one locking read, one INSERT of new agents (and one of their
    first transitions) and one UPDATE of the changed, whatever their number.

    Raises ValidationError keyed by agent id (or ``records[i]`` for a record
    without a usable id) and stores nothing if any record is invalid.
    """
    records = list(records)
    if len(records) > MAX_RECORDS:
        raise ValidationError(f"At most {MAX_RECORDS} records per sync.")
    errors: dict[str, list[str]] = {}
    by_id: dict[str, Mapping] = {}
    for index, record in enumerate(records):
        key, problem = _record_key(record, index, by_id)
        if problem:
            errors[key] = [problem]
        else:
            by_id[key] = record
    result = SyncResult()
    now = timezone.now()
    with transaction.atomic():
        existing = Agent.objects.select_for_update().filter(pk__in=list(by_id)).order_by("pk")
        existing = {agent.pk: agent for agent in existing}
        created, updated, fields = [], [], set()
        for agent_id, record in by_id.items():
            changes = {name: value for name, value in record.items() if name != "id"}
            try:
                if agent_id in existing:
                    changed = _apply(existing[agent_id], changes)
                    (updated if changed else result.unchanged).append(existing[agent_id])
                    fields.update(changed)
                else:
                    created.append(_new_agent(agent_id, changes, now))
            except ValidationError as exc:
                errors[agent_id] = _messages(exc)
        if errors:
            raise ValidationError(errors)
        _store(created, updated, fields, actor, now)
    result.created = [agent.pk for agent in created]
    result.updated = [agent.pk for agent in updated]
    result.unchanged = [agent.pk for agent in result.unchanged]
    log.info(
        "agent.registry_synced",
        created=len(result.created),
        updated=len(result.updated),
        unchanged=len(result.unchanged),
        actor=actor,
    )
    return result


def _record_key(record, index: int, seen: Mapping) -> tuple[str, str]:
    """The record's agent id, or where it is and what is wrong with it."""
    where = f"records[{index}]"
    if not isinstance(record, Mapping):
        return where, "Each record must be a mapping of field names to values."
    agent_id = record.get("id")
    if not isinstance(agent_id, str) or not agent_id:
        return where, "Each record needs an agent id."
    if agent_id in seen:
        return agent_id, "The same agent appears more than once."
    unknown = sorted(set(record) - {"id", *METADATA_FIELDS})
    if unknown:
        return agent_id, f"{', '.join(unknown)}: {_not_a_field()}"
    return agent_id, ""


def _apply(agent: Agent, changes: Mapping) -> list[str]:
    """Set ``changes`` on ``agent`` (unsaved) and validate them; return the fields changed."""
    changed = [name for name, value in changes.items() if getattr(agent, name) != value]
    for name in changed:
        setattr(agent, name, changes[name])
    other = [f.name for f in Agent._meta.fields if f.name not in changed]
    agent.clean_fields(exclude=other)
    if TIMING_FIELDS & set(changed):
        changed += _move_deadlines(agent)
    return changed


def _move_deadlines(agent: Agent) -> list[str]:
    """Recompute pending deadlines after a change of interval or role."""
    if agent.overdue_at is not None:
        since = agent.last_heartbeat_at or agent.created_at
        agent.overdue_at = miss_deadline(agent, since, agent.missed_heartbeats + 1)
    if agent.stuck_at is not None:
        agent.stuck_at = stuck_deadline(agent)
    return ["overdue_at", "stuck_at"]


def _new_agent(agent_id: str, changes: Mapping, now) -> Agent:
    agent = Agent(id=agent_id, created_at=now, state_changed_at=now, **changes)
    agent.full_clean(validate_unique=False)
    agent.overdue_at = miss_deadline(agent, now, 1)
    return agent


def _store(created, updated, fields, actor: str, now) -> None:
    if created:
        Agent.objects.bulk_create(created)
        AgentTransition.objects.bulk_create(
            AgentTransition(
                agent=agent,
                from_state="",
                to_state=AgentState.SPAWNING,
                reason="registered from the registry",
                actor=actor,
                at=now,
            )
            for agent in created
        )
    if updated:
        Agent.objects.bulk_update(updated, sorted(fields))
        # A bulk UPDATE sends no signal: the lean path caches interval and role defaults.
        invalidate_on_commit(agents=[agent.pk for agent in updated])


def _messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "error_dict"):
        return [f"{name}: {m}" for name, errors in exc.message_dict.items() for m in errors]
    return exc.messages


def _not_a_field() -> str:
    return f"Not a registry field; these are {', '.join(METADATA_FIELDS)}."
