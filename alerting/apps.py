from django.apps import AppConfig


class AlertingConfig(AppConfig):
    name = "alerting"
    verbose_name = "Alerting"

    def ready(self):
        from alerting import handlers  # noqa: F401  (registers event handlers)
