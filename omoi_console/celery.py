import os

from celery import Celery
from celery.signals import setup_logging

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
