"""How long profiles are kept (imported by the app config)."""

from observability.models import ProfileSnapshot
from omoi_console.foundation.retention import RowRetention, days_kept, register

PROFILES = register(
    RowRetention(
        name="observability.profiles",
        model=ProfileSnapshot,
        age_field="created_at",
        keep=days_kept("RETAIN_PROFILES_DAYS"),
    )
)
