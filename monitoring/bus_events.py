"""Messages from an agents' event bus, turned into the records the HTTP API makes.

Whatever carries them (Redis Streams in ``monitoring.stream_consumer``), a
message is a ``type``, an ``agent_id`` and a JSON ``data`` object, plus the
bus's own id and time; docs/monitoring/consume-events.md gives the format.
Delivery is at least once, so applying a message twice must change nothing:

* metrics: the bus's message id is the batch's idempotency key;
* heartbeats (and the heartbeat a task event implies) are dated by the bus,
  and one no newer than the agent's last recorded heartbeat is ignored;
* registry events set an agent's metadata to what they say (an upsert).

``apply`` raises ``Malformed`` for a message that can never be processed (the
consumer dead-letters it); any other exception leaves it to be delivered again.
"""

import json
import math
from dataclasses import dataclass
from datetime import datetime

import structlog
from django.core.exceptions import ValidationError

from monitoring import samples, services
from monitoring.api.serializers import HeartbeatSerializer
from monitoring.models import Agent, AgentState
from monitoring.registry import METADATA_FIELDS, sync_registry

log = structlog.get_logger(__name__)

TYPES = ("heartbeat", "task", "registry", "metrics")
MAX_DATA_BYTES = 10 * 1024 * 1024
TASK_STATUSES = {
    "started": AgentState.RUNNING,
    "progress": AgentState.RUNNING,
    "succeeded": AgentState.IDLE,
    "failed": AgentState.IDLE,
}
TASK_FIELDS = {"task_id", "status", "progress", "kind", "duration_seconds"}
REGISTRY_FIELDS = frozenset(METADATA_FIELDS)


class Malformed(Exception):
    """The message can never be processed as it is; the reason is safe to show."""


@dataclass(frozen=True)
class BusMessage:
    id: str
    type: str
    agent_id: str
    data: dict
    at: datetime
    # Names this message among every bus and consumer: the idempotency key of what it stores.
    key: str


def parse(fields: dict, *, id: str, at: datetime, key: str) -> BusMessage:
    """A bus message from its raw fields (text), or Malformed saying what is wrong."""
    unknown = set(fields) - {"type", "agent_id", "data"}
    if unknown:
        raise Malformed(f"unknown field(s): {', '.join(sorted(unknown)[:5])}")
    kind = fields.get("type")
    if kind not in TYPES:
        raise Malformed(f"type must be one of {', '.join(TYPES)}")
    agent_id = fields.get("agent_id")
    if not isinstance(agent_id, str) or not agent_id:
        raise Malformed("agent_id is required")
    raw = fields.get("data", "{}")
    if not isinstance(raw, str) or len(raw) > MAX_DATA_BYTES:
        raise Malformed(f"data is a JSON object of at most {MAX_DATA_BYTES} bytes")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise Malformed("data is not valid JSON") from None
    if not isinstance(data, dict):
        raise Malformed("data is a JSON object")
    return BusMessage(id=id, type=kind, agent_id=agent_id, data=data, at=at, key=key)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def apply(message: BusMessage) -> str:
    """Record what ``message`` says; returns what happened (for counts and logs)."""
    return APPLY[message.type](message)


def apply_heartbeat(message: BusMessage) -> str:
    serializer = HeartbeatSerializer(data=message.data)
    if not serializer.is_valid():
        raise Malformed(f"invalid heartbeat: {_first_error(serializer.errors)}")
    return _heartbeat(message, **serializer.validated_data)


def apply_task(message: BusMessage) -> str:
    data = message.data
    unknown = set(data) - TASK_FIELDS
    if unknown:
        raise Malformed(f"unknown task field(s): {', '.join(sorted(unknown)[:5])}")
    status = data.get("status")
    if status not in TASK_STATUSES:
        raise Malformed(f"task status must be one of {', '.join(TASK_STATUSES)}")
    task_id = data.get("task_id", "")
    finished = TASK_STATUSES[status] == AgentState.IDLE
    report = {
        "state": TASK_STATUSES[status],
        "task_id": "" if finished else task_id,
        "progress": None if finished else data.get("progress"),
    }
    serializer = HeartbeatSerializer(data=report)
    if not isinstance(task_id, str) or not serializer.is_valid():
        raise Malformed(f"invalid task event: {_first_error(serializer.errors) or 'task_id'}")
    outcome = "task"
    duration = data.get("duration_seconds")
    if duration is not None:
        # Stored first: it is idempotent by key, so a retry after a failure below is harmless.
        labels = {"task_kind": data["kind"]} if "kind" in data else {}
        sample = {"name": "task_latency_seconds", "labels": labels, "ts": message.at.timestamp()}
        stored = _ingest([{**sample, "value": duration}], message, f"{message.key}:latency")
        outcome = "task+latency" if not stored.duplicate else "task"
    if _heartbeat(message, **serializer.validated_data) == "stale" and outcome == "task":
        return "stale"
    return outcome


def apply_metrics(message: BusMessage) -> str:
    if set(message.data) != {"samples"}:
        raise Malformed('metrics data is {"samples": [...]}')
    stored = _ingest(message.data["samples"], message, message.key)
    return "duplicate" if stored.duplicate else "metrics"


def apply_registry(message: BusMessage) -> str:
    data = message.data
    unknown = set(data) - REGISTRY_FIELDS
    if unknown:
        raise Malformed(f"unknown registry field(s): {', '.join(sorted(unknown)[:5])}")
    interval = data.get("heartbeat_interval")
    if interval is not None and (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not math.isfinite(interval)
    ):
        raise Malformed("heartbeat_interval is a number of seconds")
    metadata = dict(data)
    try:
        return upsert_agent(message.agent_id, metadata, actor="event-bus")
    except ValidationError as exc:
        raise Malformed(f"invalid registry event: {_first_error(exc.message_dict)}") from None


def upsert_agent(agent_id: str, metadata: dict, *, actor: str) -> str:
    """Register an agent the console does not know, or set a known one's ``metadata``
    (what is absent stays), through the registry mirror's one seam. Raises
    ValidationError for metadata an agent cannot have."""
    result = sync_registry([{"id": agent_id, **metadata}], actor=actor)
    if result.created:
        return "registered"
    return "updated" if result.updated else "unchanged"


def _heartbeat(message: BusMessage, **report) -> str:
    agent = Agent.objects.filter(pk=message.agent_id).first()
    if agent is None:
        raise Malformed("unknown agent")
    try:
        result = services.record_heartbeat(agent, deliver=False, at=message.at, **report)
    except services.AgentUnavailable:
        raise Malformed("the agent is terminated") from None
    return "stale" if result.stale else "heartbeat"


def _ingest(batch, message: BusMessage, key: str) -> samples.Stored:
    try:
        return samples.ingest(batch, agent_id=message.agent_id, key=key)
    except samples.BatchRejected as exc:
        first = exc.problems[0].as_dict() if exc.problems else {}
        raise Malformed(f"{exc.detail} First: {first}") from None


def _first_error(errors) -> str:
    if not errors:
        return ""
    field, details = next(iter(errors.items()))
    detail = details[0] if isinstance(details, list) and details else details
    return f"{field}: {detail}"


APPLY = {
    "heartbeat": apply_heartbeat,
    "task": apply_task,
    "registry": apply_registry,
    "metrics": apply_metrics,
}
