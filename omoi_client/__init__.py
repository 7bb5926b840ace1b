"""An async client for the Omoi Console's HTTP API, for agents and operator tools.

It depends on httpx, tenacity and structlog only, never on the console's code.
"""

from omoi_client.buffer import Counters
from omoi_client.client import AsyncOmoiClient
from omoi_client.errors import (
    ApiError,
    BatchRejected,
    ConnectionFailed,
    FieldProblem,
    OmoiError,
    RequestRejected,
    Unavailable,
    UnexpectedResponse,
)
from omoi_client.results import (
    AnomalySummary,
    Command,
    FleetSummary,
    HeartbeatReply,
    IngestResult,
    MetricSpec,
    QueryResult,
    Series,
    SeriesPoints,
    TopEntry,
    TopResult,
)
from omoi_client.retrying import RetryPolicy

__all__ = [
    "AnomalySummary",
    "ApiError",
    "AsyncOmoiClient",
    "BatchRejected",
    "Command",
    "ConnectionFailed",
    "Counters",
    "FieldProblem",
    "FleetSummary",
    "HeartbeatReply",
    "IngestResult",
    "MetricSpec",
    "OmoiError",
    "QueryResult",
    "RequestRejected",
    "RetryPolicy",
    "Series",
    "SeriesPoints",
    "TopEntry",
    "TopResult",
    "Unavailable",
    "UnexpectedResponse",
]
