"""The metrics catalogue: complete, documented, and the page current."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from monitoring import catalog
from monitoring.catalog import MetricSpec, MetricType


def test_it_holds_the_metrics_every_app_publishes():
    names = set(catalog.CATALOG)
    assert {
        "task_latency_seconds",
        "queue_depth",
        "lock_wait_seconds",
        "agent_availability",
    } <= names
    assert {"heartbeat_age_seconds", "task_failures_total"} <= names
    assert {"alerts_firing", "notifications_failed_total", "watchdog_actions_total"} <= names
    for spec in catalog.CATALOG.values():
        assert spec.description and spec.unit and spec.labels, spec.name


def test_it_refuses_a_metric_declared_twice_differently():
    spec = catalog.get("queue_depth")
    catalog.declare(spec)  # the same again is harmless
    with pytest.raises(ValueError, match="declared twice"):
        catalog.declare(MetricSpec("queue_depth", MetricType.COUNTER, "tasks", ("agent",), "x"))
    with pytest.raises(ValueError, match="lower_snake_case"):
        MetricSpec("Queue-Depth", MetricType.GAUGE, "tasks", (), "x")


def test_it_keeps_docs_monitoring_metrics_md_current():
    call_command("metrics_doc", "--check")


def test_it_notices_a_stale_page(tmp_path, monkeypatch):
    from monitoring.management.commands import metrics_doc

    stale = tmp_path / "metrics.md"
    stale.write_text("# Metrics catalogue\n")
    monkeypatch.setattr(metrics_doc, "DOC", stale)
    with pytest.raises(CommandError, match="stale"):
        call_command("metrics_doc", "--check")
