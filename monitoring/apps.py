from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self):
        from monitoring import retention  # noqa: F401  (registers retention policies)
        from monitoring.ingest import signals

        signals.connect()

        from monitoring.prometheus import fleet_metrics
        from observability.prometheus import register_scrape_collector

        register_scrape_collector("fleet", fleet_metrics)
