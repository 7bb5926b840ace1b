from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _seed(sender, **kwargs):
    from alerting.builtins import ensure_builtin_receivers, ensure_builtin_rules

    ensure_builtin_rules()
    ensure_builtin_receivers()


class AlertingConfig(AppConfig):
    name = "alerting"
    verbose_name = "Alerting"

    def ready(self):
        # Imported for what they register: event handlers, metrics, retention policies.
        from alerting import handlers, metrics, retention  # noqa: F401

        post_migrate.connect(_seed, sender=self, dispatch_uid="alerting.seed")

        from alerting.prometheus import alert_metrics
        from observability.prometheus import register_scrape_collector

        register_scrape_collector("alerts", alert_metrics)
