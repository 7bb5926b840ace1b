from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _seed(sender, **kwargs):
    from watchdog.builtins import ensure_default_policies

    ensure_default_policies()


class WatchdogConfig(AppConfig):
    name = "watchdog"
    verbose_name = "Watchdog"

    def ready(self):
        from watchdog import handlers  # noqa: F401  (registers event handlers)
        from watchdog import retention  # noqa: F401  (registers retention policies)

        post_migrate.connect(_seed, sender=self, dispatch_uid="watchdog.seed")
