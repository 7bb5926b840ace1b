from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    verbose_name = "Observability"

    def ready(self):
        from observability import store_retention  # noqa: F401  (registers retention policies)
        from observability.tracing import configure_tracing

        configure_tracing()
