# The Celery app must be imported with the project, or tasks bind to an
# unconfigured default app that tries to reach a broker.
from omoi_console.celery import app as celery_app

__all__ = ["celery_app"]
