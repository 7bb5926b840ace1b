import os

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")

app = Celery("omoi_console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect(weak=False)
def keep_django_logging(**kwargs):
    """Workers and beat log through LOGGING (structured JSON) like the web process.

    A receiver on this signal stops Celery from replacing the root handlers with
    its own plain-text format; Django's setup has already applied LOGGING.
    """


@worker_process_init.connect(weak=False)
@worker_ready.connect(weak=False)
def settle_collector(**kwargs):
    """Once a worker process has loaded everything (in each pool process, and in the
    main process, which runs the tasks itself with the solo pool)."""
    from omoi_console.foundation import collector

    collector.settle()
