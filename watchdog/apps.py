from django.apps import AppConfig


class WatchdogConfig(AppConfig):
    name = "watchdog"
    verbose_name = "Watchdog"

    def ready(self):
        from watchdog import handlers  # noqa: F401  (registers event handlers)
