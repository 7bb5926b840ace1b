"""``/metrics`` for Prometheus: the processes' counters plus numbers read from the database.

Two kinds of metric, chosen by where the truth lives:

- Counters and histograms of things that happen in a process (requests,
  notifications sent, remediation actions finished, rule evaluations) use
  prometheus_client. The web server runs several workers and the Celery worker
  has processes of its own, so with PROMETHEUS_MULTIPROC_DIR set every process
  writes its values to files there and a scrape of any web worker sums them all
  (prometheus_client's multiprocess mode).
- Levels (alerts firing, heartbeat age, event-bus lag) are read from the
  database at scrape time by collectors the apps register with
  ``register_scrape_collector``: the same answer from whichever process is
  scraped, and no process has to be alive to keep them current.

Access is decided by OMOI_METRICS_ALLOW (client networks) and
OMOI_METRICS_TOKEN (a bearer token); see ``allowed``.
"""

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterable

import structlog
from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from omoi_console.foundation.rate_limits import client_address, trusted_networks

log = structlog.get_logger(__name__)

_scrape_collectors: dict[str, Callable[[], Iterable[Metric]]] = {}


def register_scrape_collector(name: str, collect: Callable[[], Iterable[Metric]]) -> None:
    """Add ``collect`` to every scrape; registering a name again replaces it."""
    _scrape_collectors[name] = collect


class ScrapeCollectors(Collector):
    """The registered collectors, each allowed to fail alone.

    A collector that raises (the database is down) drops its own metrics from
    the scrape, and ``omoi_scrape_collector_up`` says which: the rest of the
    page, process metrics included, still answers.
    """

    def collect(self):
        up = GaugeMetricFamily(
            "omoi_scrape_collector_up",
            "1 when the collector's numbers were read at this scrape, 0 when it failed.",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            "omoi_scrape_collector_duration_seconds",
            "Time the collector took at this scrape.",
            labels=["collector"],
        )
        for name, collect in sorted(_scrape_collectors.items()):
            started = time.perf_counter()
            try:
                metrics = list(collect())
            except Exception:
                log.exception("metrics.collector_failed", collector=name)
                up.add_metric([name], 0)
            else:
                yield from metrics
                up.add_metric([name], 1)
            duration.add_metric([name], time.perf_counter() - started)
        yield up
        yield duration


class _ProcessRegistry(Collector):
    """This process's own registry, for a scrape without multiprocess mode."""

    def collect(self):
        return REGISTRY.collect()


def event_bus_metrics():
    """``event_bus_lag_seconds`` and ``event_bus_pending_events``: two index-only reads."""
    from django.db.models import Count, Min

    from omoi_console.models import Event, EventStatus

    now = timezone.now()
    pending = Event.objects.filter(status=EventStatus.PENDING).order_by()
    found = pending.aggregate(oldest=Min("occurred_at"), count=Count("pk"))
    lag = GaugeMetricFamily(
        "event_bus_lag_seconds",
        "Age of the oldest event not yet handled by all its handlers (0 when none waits).",
    )
    lag.add_metric([], max(0.0, (now - found["oldest"]).total_seconds()) if found["oldest"] else 0)
    waiting = GaugeMetricFamily("event_bus_pending_events", "Events waiting for their handlers.")
    waiting.add_metric([], found["count"])
    dead = GaugeMetricFamily(
        "event_bus_dead_events", "Events whose handlers gave up after their last attempt."
    )
    dead.add_metric([], Event.objects.filter(status=EventStatus.DEAD).count())
    return [lag, waiting, dead]


def exposition() -> bytes:
    """The text page Prometheus scrapes."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessRegistry())
    registry.register(ScrapeCollectors())
    return generate_latest(registry)


def allowed(request) -> tuple[bool, int]:
    """Whether ``request`` may read the metrics; else the status to refuse it with.

    A request passes when it comes from a network in OMOI_METRICS_ALLOW (``*``
    is every network) or carries ``Authorization: Bearer <OMOI_METRICS_TOKEN>``.
    Refused: 401 when a token would have let it in, 403 otherwise.
    """
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, credential = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), token.encode()
        ):
            return True, 200
    source = client_address(
        request.META.get("REMOTE_ADDR", ""),
        request.META.get("HTTP_X_FORWARDED_FOR"),
        trusted_networks(settings.TRUSTED_PROXIES),
    )
    if in_networks(source, settings.METRICS_ALLOW):
        return True, 200
    return False, 401 if token else 403


def in_networks(address: str, networks: tuple) -> bool:
    if networks == ("*",):
        return True
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


@require_safe
def metrics_view(request):
    ok, status = allowed(request)
    if not ok:
        response = HttpResponse(
            "metrics: not allowed from here\n", status=status, content_type="text/plain"
        )
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
