"""The routine subset of the heartbeat schema, checked without DRF.

``routine_report`` answers only "is this certainly a valid heartbeat that needs
nothing but a liveness write or a plain state change?". Anything else (a field
of the wrong type, an unknown key, acknowledgements, a ``failed`` report, bad
JSON) returns None and the request goes to ``HeartbeatSerializer`` on Django's
path, which words the error exactly as it always has. The two share their
bounds through the constants in ``monitoring.models``.
"""

import math
from dataclasses import dataclass

from monitoring.models import (
    STUCK_AFTER_MAX_SECONDS,
    STUCK_AFTER_MIN_SECONDS,
    TASK_ID_MAX_LENGTH,
    AgentState,
)
from omoi_console.foundation.api.parsers import load_strict_json

FIELDS = frozenset({"state", "task_id", "progress", "stuck_after", "acks", "generation"})
# A report of ``failed`` starts remediation: it takes the full path.
LEAN_REPORTS = frozenset({AgentState.IDLE.value, AgentState.RUNNING.value})


@dataclass(frozen=True)
class Report:
    state: str
    task_id: str
    progress: float | None
    stuck_after: float | None = None


def routine_report(body: bytes) -> Report | None:
    try:
        data = load_strict_json(body)
    except ValueError:
        return None
    if type(data) is not dict or not data.keys() <= FIELDS:
        return None
    state = data.get("state")
    if state not in LEAN_REPORTS:
        return None
    if data.get("acks", []) != []:
        return None
    # Only a failed report reads the restart generation, and those take the full path.
    generation = data.get("generation")
    if generation is not None and (type(generation) is not int or generation < 0):
        return None
    task_id = data.get("task_id", "")
    if type(task_id) is not str:
        return None
    # DRF's CharField trims, then measures.
    task_id = task_id.strip()
    if len(task_id) > TASK_ID_MAX_LENGTH:
        return None
    progress = bounded_number(data.get("progress"), 0.0, 1.0)
    stuck_after = bounded_number(
        data.get("stuck_after"), STUCK_AFTER_MIN_SECONDS, STUCK_AFTER_MAX_SECONDS
    )
    if progress is INVALID or stuck_after is INVALID:
        return None
    return Report(state, task_id, progress, stuck_after)


INVALID = object()


def bounded_number(value, low: float, high: float):
    """``value`` as a float if it is null or a JSON number within bounds, else INVALID."""
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        return INVALID
    if not low <= value <= high:
        return INVALID
    return float(value)
