"""Typed answers of the console's API, parsed from its JSON."""

from dataclasses import dataclass, field
from datetime import UTC, datetime

from omoi_client.errors import FieldProblem, UnexpectedResponse


def moment(value) -> datetime:
    """An ISO 8601 time or Unix seconds, as an aware datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise TypeError(f"not a time: {value!r}")


def parsed(kind, body):
    """``kind.from_json(body)``, or UnexpectedResponse naming what did not fit."""
    try:
        return kind.from_json(body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UnexpectedResponse(f"the console's answer is not a {kind.__name__}: {exc!r}") from exc


def problems_of(body) -> tuple[FieldProblem, ...]:
    if not isinstance(body, dict) or not isinstance(body.get("errors"), list):
        return ()
    return tuple(
        FieldProblem(error.get("index"), error.get("field"), str(error.get("detail", "")))
        for error in body["errors"]
        if isinstance(error, dict)
    )


@dataclass(frozen=True)
class Command:
    """An instruction for the agent; acknowledge it by id in a later heartbeat."""

    id: int
    kind: str
    reason: str
    issued_at: datetime
    # A restart's generation: echo it in later heartbeats (``generation=``).
    generation: int | None = None
    # Per kind: restart has graceful_stop_seconds; recycle_token has token;
    # take_task has task_id, progress and from_agent.
    params: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict) -> "Command":
        generation = body.get("generation")
        return cls(
            int(body["id"]),
            body["kind"],
            body["reason"],
            moment(body["issued_at"]),
            None if generation is None else int(generation),
            dict(body.get("params") or {}),
        )


@dataclass(frozen=True)
class HeartbeatReply:
    agent_id: str
    state: str
    heartbeat_interval_seconds: float
    commands: tuple[Command, ...]

    @classmethod
    def from_json(cls, body: dict) -> "HeartbeatReply":
        return cls(
            body["agent_id"],
            body["state"],
            float(body["heartbeat_interval_seconds"]),
            tuple(Command.from_json(command) for command in body["commands"]),
        )


@dataclass(frozen=True)
class IngestResult:
    stored: int
    series_created: int
    duplicate: bool

    @classmethod
    def from_json(cls, body: dict) -> "IngestResult":
        return cls(int(body["stored"]), int(body["series_created"]), bool(body["duplicate"]))


@dataclass(frozen=True)
class MetricSpec:
    """One entry of the metrics catalogue."""

    name: str
    type: str
    unit: str
    labels: tuple[str, ...]
    description: str
    producer: str
    app: str
    max_series: int

    @classmethod
    def from_json(cls, body: dict) -> "MetricSpec":
        return cls(
            body["name"],
            body["type"],
            body["unit"],
            tuple(body["labels"]),
            body["description"],
            body["producer"],
            body["app"],
            int(body["max_series"]),
        )


@dataclass(frozen=True)
class Series:
    """One metric with one label set."""

    id: int
    metric: str
    labels: dict[str, str]
    agent_id: str
    created_at: datetime

    @classmethod
    def from_json(cls, body: dict) -> "Series":
        return cls(
            int(body["id"]),
            body["metric"],
            dict(body["labels"]),
            body.get("agent_id") or "",
            moment(body["created_at"]),
        )


@dataclass(frozen=True)
class SeriesPoints:
    """A series' values over time: ``points`` are ``(unix seconds, value)``."""

    id: int
    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]

    @classmethod
    def from_json(cls, body: dict) -> "SeriesPoints":
        points = tuple((float(ts), float(value)) for ts, value in body["points"])
        return cls(int(body["id"]), dict(body["labels"]), points)


@dataclass(frozen=True)
class QueryResult:
    metric: str
    agg: str
    step: float
    start: datetime
    end: datetime
    source: str  # "raw" samples or per-minute "rollup"s
    series: tuple[SeriesPoints, ...]

    @classmethod
    def from_json(cls, body: dict) -> "QueryResult":
        return cls(
            body["metric"],
            body["agg"],
            float(body["step"]),
            moment(body["start"]),
            moment(body["end"]),
            body["source"],
            tuple(SeriesPoints.from_json(series) for series in body["series"]),
        )


@dataclass(frozen=True)
class TopEntry:
    agent: str
    value: float

    @classmethod
    def from_json(cls, body: dict) -> "TopEntry":
        return cls(body["agent"], float(body["value"]))


@dataclass(frozen=True)
class TopResult:
    metric: str
    agg: str
    window: float
    results: tuple[TopEntry, ...]

    @classmethod
    def from_json(cls, body: dict) -> "TopResult":
        entries = tuple(TopEntry.from_json(entry) for entry in body["results"])
        return cls(body["metric"], body["agg"], float(body["window"]), entries)


def _counts(body) -> dict[str, int]:
    return {str(key): int(count) for key, count in dict(body).items()}


@dataclass(frozen=True)
class AnomalySummary:
    window: float
    total: int
    by_metric: dict[str, int]
    by_agent: dict[str, int]
    by_severity: dict[str, int]

    @classmethod
    def from_json(cls, body: dict) -> "AnomalySummary":
        return cls(
            float(body["window"]),
            int(body["total"]),
            _counts(body["by_metric"]),
            _counts(body["by_agent"]),
            _counts(body["by_severity"]),
        )


@dataclass(frozen=True)
class FleetSummary:
    agents: int
    by_state: dict[str, int]
    by_role: dict[str, int]
    availability: float  # 0 to 1

    @classmethod
    def from_json(cls, body: dict) -> "FleetSummary":
        return cls(
            int(body["agents"]),
            _counts(body["by_state"]),
            _counts(body["by_role"]),
            float(body["availability"]),
        )
