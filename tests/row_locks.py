"""Another worker holding a row lock, for tests of work that must skip locked rows."""

import threading
from contextlib import contextmanager

from django.db import connections, transaction


@contextmanager
def held_by_another_worker(queryset):
    """While inside, another thread's transaction holds ``SELECT ... FOR UPDATE`` on the rows."""
    holding, release = threading.Event(), threading.Event()

    def other_worker():
        try:
            with transaction.atomic():
                list(queryset.select_for_update())
                holding.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        assert holding.wait(10), "the other worker never took the lock"
        yield
    finally:
        release.set()
        thread.join()
