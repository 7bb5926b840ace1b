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

from monitoring.models import TASK_ID_MAX_LENGTH, AgentState
from omoi_console.foundation.api.parsers import load_strict_json

FIELDS = frozenset({"state", "task_id", "progress", "acks"})
# A report of ``failed`` starts remediation: it takes the full path.
LEAN_REPORTS = frozenset({AgentState.IDLE.value, AgentState.RUNNING.value})


@dataclass(frozen=True)
class Report:
    state: str
    task_id: str
    progress: float | None


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
    task_id = data.get("task_id", "")
    if type(task_id) is not str:
        return None
    # DRF's CharField trims, then measures.
    task_id = task_id.strip()
    if len(task_id) > TASK_ID_MAX_LENGTH:
        return None
    progress = data.get("progress")
    if progress is not None:
        if type(progress) not in (int, float) or not math.isfinite(progress):
            return None
        if not 0.0 <= progress <= 1.0:
            return None
        progress = float(progress)
    return Report(state, task_id, progress)
