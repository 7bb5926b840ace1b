from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


def _after_migrate(sender, **kwargs):
    # Permissions of every app exist once the last app has migrated.
    if sender is not list(apps.get_app_configs())[-1]:
        return
    from omoi_console.foundation.roles import sync_roles
    from omoi_console.top.schedule import sync_beat_schedule

    sync_roles()
    sync_beat_schedule()


class OmoiConsoleConfig(AppConfig):
    name = "omoi_console"
    verbose_name = "Omoi Console"

    def ready(self):
        import omoi_console.foundation.api.schema  # noqa: F401  (registers the OpenAPI auth schemes)
        from omoi_console.foundation.events import retention  # noqa: F401  (registers policies)
        from omoi_console.foundation.events.broadcast import broadcast_events
        from omoi_console.foundation.events.registry import ALL, subscribe
        from omoi_console.top import self_watch  # noqa: F401  (declares the console's metrics)

        # Outside any transaction: the send may wait on the channel layer.
        subscribe(ALL, handler_id="console.broadcast", batch=True, atomic=False)(broadcast_events)
        post_migrate.connect(_after_migrate, dispatch_uid="omoi_console.after_migrate")
