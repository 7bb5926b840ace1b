import gc

import pytest

from omoi_console import celery
from omoi_console.foundation import collector


@pytest.fixture
def restored():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_a_settled_worker_freezes_what_it_loaded_and_collects_young_objects_less_often(restored):
    young, middle, old = gc.get_threshold()
    assert young < collector.YOUNG_THRESHOLD

    celery.settle_collector()

    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 0


def test_every_worker_process_settles_once_loaded():
    from celery.signals import worker_process_init, worker_ready

    for signal in (worker_process_init, worker_ready):
        assert celery.settle_collector in [receiver for _, receiver in signal.receivers]
