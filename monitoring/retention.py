"""How long agent transitions are kept. Imported by ``MonitoringConfig.ready()``.

A transition is history only: the agent row holds its current state and when
it changed, and nothing reads an old transition to decide anything, so every
transition older than the retention may go.
"""

from monitoring.models import AgentTransition
from omoi_console.foundation.retention import RowRetention, days_kept, register

TRANSITIONS = register(
    RowRetention(
        name="agent.transitions",
        model=AgentTransition,
        age_field="at",
        keep=days_kept("RETAIN_TRANSITIONS_DAYS"),
    )
)
