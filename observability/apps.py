from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    verbose_name = "Observability"

    def ready(self):
        from observability import prometheus, retention, store_retention  # noqa: F401
        from observability.tracing import configure_tracing

        configure_tracing()
        prometheus.register_scrape_collector("event_bus", prometheus.event_bus_metrics)
