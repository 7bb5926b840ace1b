"""Production dispatch: the event travels through a real Redis broker to a worker process."""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import quote

import pytest
import redis

from alerting.models import AlertRule
from omoi_console.celery import app as celery_app
from omoi_console.foundation.events import publish
from omoi_console.foundation.events.registry import subscribe, unsubscribe
from omoi_console.models import Event, EventReceipt, EventStatus

LOST = {"agent_id": "worker-01", "role": "worker", "last_heartbeat_at": None, "missed": 3}
WORKER_DEADLINE_SECONDS = 60


def database_url(settings) -> str:
    """The URL of the database this test runs against, for a process of its own."""
    db = settings.DATABASES["default"]
    auth = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def queued_dispatches(client, queue: str) -> list[list[str]]:
    """The event ids carried by every dispatch task waiting in the Redis list of ``queue``."""
    batches = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"].endswith("tasks.dispatch_events")
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        batches.append(args[0])
    return batches


def start_worker(settings, queue: str, log) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(settings),
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    command = [sys.executable, "-m", "celery", "-A", "omoi_console", "worker", "-Q", queue]
    command += ["--pool", "solo", "--without-heartbeat", "--without-gossip", "--without-mingle"]
    return subprocess.Popen(  # noqa: S603  (our own interpreter and arguments)
        command, env=env, cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT
    )


def wait_until_processed(event: Event, worker: subprocess.Popen) -> bool:
    deadline = time.monotonic() + WORKER_DEADLINE_SECONDS
    while time.monotonic() < deadline and worker.poll() is None:
        event.refresh_from_db()
        if event.status == EventStatus.PROCESSED:
            return True
        time.sleep(0.2)  # polling another process's progress
    return False


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_dispatches_events_through_redis_to_a_worker_process(settings, eager_celery):
    # Only this process knows this handler: if it acts, the event never left.
    in_process = []
    subscribe("monitor.agent.heartbeat_lost", handler_id="test.broker")(in_process.append)
    AlertRule.objects.update(enabled=False)  # the worker's handlers then publish nothing
    client = redis.Redis.from_url(settings.REDIS_URL)
    # A queue of its own: no message left over from another run is consumed here.
    queue = f"omoi-test-{uuid.uuid4().hex[:8]}"
    broker = celery_app.conf.broker_url
    celery_app.conf.task_always_eager = False
    celery_app.conf.broker_url = settings.REDIS_URL
    celery_app.conf.task_default_queue = queue
    worker = None
    try:
        event = publish("monitor.agent.heartbeat_lost", LOST)
        # No worker yet: the dispatch task waits in Redis and nothing has acted.
        assert queued_dispatches(client, queue) == [[str(event.id)]]
        event.refresh_from_db()
        assert event.status == EventStatus.PENDING

        with tempfile.TemporaryFile() as log:
            worker = start_worker(settings, queue, log)
            processed = wait_until_processed(event, worker)
            log.seek(0)
            assert processed, f"the worker never processed the event:\n{log.read().decode()}"
        assert client.llen(queue) == 0  # the worker took the message from Redis
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        unsubscribe("test.broker")
        celery_app.conf.task_default_queue = "celery"
        celery_app.conf.broker_url = broker
        client.delete(queue)

    assert in_process == []
    handlers = set(EventReceipt.objects.filter(event=event).values_list("handler", flat=True))
    assert {"console.broadcast", "alerting.heartbeat_lost", "watchdog.heartbeat_lost"} <= handlers
    assert "test.broker" not in handlers
