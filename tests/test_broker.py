"""Production dispatch: the event travels through a real Redis broker to a real worker."""

import threading
import uuid

import pytest

from omoi_console.celery import app as celery_app
from omoi_console.foundation.events import publish
from omoi_console.foundation.events.registry import subscribe, unsubscribe
from omoi_console.models import Event, EventStatus

LOST = {"agent_id": "worker-01", "role": "worker", "last_heartbeat_at": None, "missed": 3}


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_it_dispatches_events_through_a_real_broker_and_worker(settings, eager_celery):
    from celery.contrib.testing.worker import start_worker
    from celery.signals import task_postrun

    dispatched = threading.Event()
    seen = []

    def handler(event):
        seen.append((event.id, threading.current_thread().name))

    done_ids = []

    def task_done(sender=None, args=(), **kwargs):
        if sender.name.endswith("dispatch_event"):
            done_ids.extend(args)
            dispatched.set()

    subscribe("monitor.agent.heartbeat_lost", handler_id="test.broker")(handler)
    task_postrun.connect(task_done, weak=False)
    broker = celery_app.conf.broker_url
    celery_app.conf.task_always_eager = False
    celery_app.conf.broker_url = settings.REDIS_URL
    # A queue of its own: no message left over from another run is consumed here.
    queue = f"omoi-test-{uuid.uuid4().hex[:8]}"
    celery_app.conf.task_default_queue = queue
    try:
        with start_worker(celery_app, perform_ping_check=False, queues=[queue]):
            event = publish("monitor.agent.heartbeat_lost", LOST)
            assert dispatched.wait(20), "the worker never dispatched the event"
            assert done_ids[0] == str(event.id)
    finally:
        unsubscribe("test.broker")
        task_postrun.disconnect(task_done)
        celery_app.conf.task_default_queue = "celery"
        celery_app.conf.broker_url = broker

    assert seen[0][0] == event.id
    assert seen[0][1] != threading.current_thread().name  # ran in the worker, not inline
    event.refresh_from_db()
    assert event.status == EventStatus.PROCESSED
    assert Event.objects.filter(pk=event.pk, receipts__handler="test.broker").exists()
