from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _seed(sender, **kwargs):
    from watchdog.builtins import ensure_default_policies

    ensure_default_policies()


class WatchdogConfig(AppConfig):
    name = "watchdog"
    verbose_name = "Watchdog"

    def ready(self):
        # Imported for what they register: event handlers, metrics, retention policies.
        from watchdog import handlers, metrics, prometheus, retention  # noqa: F401

        post_migrate.connect(_seed, sender=self, dispatch_uid="watchdog.seed")
