"""OTLP/HTTP metrics: exports in protobuf and JSON become samples, refusals speak OTLP."""

import gzip
import json
import random
import time

import httpx
import pytest
from django.db import OperationalError
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from monitoring import otlp, samples
from monitoring.models import MetricSample, MetricSeries
from omoi_console import asgi
from tests.conftest import bearer

pytestmark = pytest.mark.django_db

PROTOBUF = "application/x-protobuf"
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


def now_ns() -> int:
    return time.time_ns()


def attributes(**values) -> list[KeyValue]:
    pairs = []
    for key, value in values.items():
        key = key.replace("__", ".")
        if isinstance(value, bool):
            pairs.append(KeyValue(key=key, value=AnyValue(bool_value=value)))
        elif isinstance(value, int):
            pairs.append(KeyValue(key=key, value=AnyValue(int_value=value)))
        else:
            pairs.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    return pairs


def export_request(*metrics: Metric, resource: dict | None = None) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(attributes(**(resource or {})))
    resource_metrics.scope_metrics.add().metrics.extend(metrics)
    return request


def gauge(name: str, *values, unit: str = "", at: int | None = None, **labels) -> Metric:
    metric = Metric(name=name, unit=unit)
    for offset, value in enumerate(values):
        point = metric.gauge.data_points.add(time_unix_nano=(at or now_ns()) - offset * 10**9)
        point.attributes.extend(attributes(**labels))
        if isinstance(value, int):
            point.as_int = value
        else:
            point.as_double = value
    return metric


def counter(name: str, value: int, *, unit="", temporality=CUMULATIVE, monotonic=True, **labels):
    metric = Metric(name=name, unit=unit)
    metric.sum.is_monotonic = monotonic
    metric.sum.aggregation_temporality = temporality
    point = metric.sum.data_points.add(time_unix_nano=now_ns(), as_int=value)
    point.attributes.extend(attributes(**labels))
    return metric


def histogram(name: str) -> Metric:
    metric = Metric(name=name, unit="s")
    metric.histogram.aggregation_temporality = CUMULATIVE
    metric.histogram.data_points.add(time_unix_nano=now_ns(), count=2, sum=3.0)
    return metric


def send(api, request, token: str, *, content_type=PROTOBUF, gzipped=False, **headers):
    if isinstance(request, ExportMetricsServiceRequest):
        if content_type == PROTOBUF:
            body = request.SerializeToString()
        else:
            body = json_format.MessageToJson(request).encode()
    else:
        body = request
    if gzipped:
        body = gzip.compress(body)
        headers["HTTP_CONTENT_ENCODING"] = "gzip"
    if token:
        headers.update(bearer(token))
    return api.generic("POST", "/v1/metrics", body, content_type=content_type, **headers)


def rpc_status(response) -> status_pb2.Status:
    status = status_pb2.Status()
    if response["Content-Type"] == PROTOBUF:
        status.ParseFromString(response.content)
    else:
        json_format.Parse(response.content.decode(), status)
    return status


def violations(status: status_pb2.Status) -> dict[str, str]:
    found = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        found.update({v.field: v.description for v in bad_request.field_violations})
    return found


def stored() -> list[tuple[str, dict, float]]:
    """Samples of this test's series (a transactional test on PostgreSQL leaves the
    unmanaged samples table as it was; its series are gone)."""
    series = {s.id: s for s in MetricSeries.objects.all()}
    return sorted(
        (series[row.series_id].metric, series[row.series_id].labels, row.value)
        for row in MetricSample.objects.filter(series_id__in=list(series))
    )


def test_it_stores_the_gauge_points_of_a_protobuf_export(api, registered_agent):
    agent, token = registered_agent
    request = export_request(gauge("queue.depth", 7, 5, unit="{tasks}", queue="reviews"))

    response = send(api, request, token)

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == PROTOBUF
    answer = ExportMetricsServiceResponse()
    answer.ParseFromString(response.content)
    assert not answer.HasField("partial_success")
    labels = {"agent": agent.id, "queue": "reviews"}
    assert stored() == [("queue_depth", labels, 5.0), ("queue_depth", labels, 7.0)]


def test_it_stores_an_otlp_json_export_and_answers_in_json(api, registered_agent):
    agent, token = registered_agent
    at = now_ns()
    body = {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "w"}}]
                },
                "scopeMetrics": [
                    {
                        "scope": {"name": "agent"},
                        "metrics": [
                            {
                                "name": "task.latency",
                                "unit": "ms",
                                "gauge": {
                                    "dataPoints": [
                                        {
                                            "timeUnixNano": str(at),
                                            "asDouble": 1500.0,
                                            "attributes": [
                                                {
                                                    "key": "task.kind",
                                                    "value": {"stringValue": "review"},
                                                }
                                            ],
                                        }
                                    ]
                                },
                            }
                        ],
                    }
                ],
                "someFieldFromTheFuture": True,
            }
        ]
    }

    response = send(api, json.dumps(body).encode(), token, content_type="application/json")

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {}
    labels = {"agent": agent.id, "task_kind": "review"}
    assert stored() == [("task_latency_seconds", labels, 1.5)]
    assert MetricSample.objects.get().ts.timestamp() == pytest.approx(at / 1e9, abs=1e-6)


def test_it_takes_a_gzip_body(api, registered_agent):
    agent, token = registered_agent
    request = export_request(gauge("error.rate", 0.25, unit="1"))

    response = send(api, request, token, gzipped=True)

    assert response.status_code == 200, response.content
    assert stored() == [("error_rate", {"agent": agent.id}, 0.25)]


def test_it_stores_a_monotonic_cumulative_sum_as_a_counter(api, registered_agent):
    agent, token = registered_agent
    request = export_request(
        counter("task.failures", 3, unit="{tasks}", task__kind="review", reason="timeout")
    )

    response = send(api, request, token)

    assert response.status_code == 200, response.content
    labels = {"agent": agent.id, "task_kind": "review", "reason": "timeout"}
    assert stored() == [("task_failures_total", labels, 3.0)]


def test_it_stores_a_non_monotonic_sum_as_a_gauge(api, registered_agent):
    agent, token = registered_agent
    request = export_request(counter("queue.depth", 4, monotonic=False, queue="q"))

    assert send(api, request, token).status_code == 200
    assert stored() == [("queue_depth", {"agent": agent.id, "queue": "q"}, 4.0)]


def test_it_rejects_histograms_and_unknown_metrics_point_by_point_and_stores_the_rest(
    api, registered_agent
):
    agent, token = registered_agent
    request = export_request(
        gauge("queue.depth", 2, queue="q"),
        histogram("task.latency"),
        gauge("process.cpu.time", 1.0, 2.0),
    )

    response = send(api, request, token)

    assert response.status_code == 200, response.content
    answer = ExportMetricsServiceResponse()
    answer.ParseFromString(response.content)
    assert answer.partial_success.rejected_data_points == 3
    message = answer.partial_success.error_message
    assert "'task.latency': histograms are not stored (1 point(s))" in message
    assert "'process.cpu.time' (as 'process_cpu_time') is not in the metrics catalogue" in message
    assert stored() == [("queue_depth", {"agent": agent.id, "queue": "q"}, 2.0)]


def test_it_refuses_an_export_of_which_nothing_is_stored(api, registered_agent):
    _, token = registered_agent

    response = send(api, export_request(histogram("task.latency")), token)

    assert response.status_code == 400
    status = rpc_status(response)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "nothing was stored" in status.message
    assert "histograms are not stored" in " ".join(violations(status).values())


def test_it_answers_an_empty_export_with_success(api, registered_agent):
    _, token = registered_agent

    response = send(api, b"", token)

    assert response.status_code == 200
    assert response.content == b""
    assert not MetricSample.objects.exists()


BAD_POINTS = {
    "an undeclared label": (
        lambda: gauge("queue.depth", 1, colour="red"),
        "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].attributes",
        "queue_depth has no label 'colour'",
    ),
    "a value that is not finite": (
        lambda: gauge("queue.depth", float("nan"), queue="q"),
        "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].value",
        "finite",
    ),
    "a time older than the retention": (
        lambda: gauge("queue.depth", 1, at=10**18, queue="q"),
        "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].timeUnixNano",
        "Older than the sample retention",
    ),
    "no time": (
        lambda: gauge("queue.depth", 1, at=1, queue="q"),
        "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].timeUnixNano",
        "Older",
    ),
    "a delta sum of a counter": (
        lambda: counter("task.failures", 1, temporality=DELTA),
        "resourceMetrics[0].scopeMetrics[0].metrics[0].sum",
        "send cumulative sums, not delta",
    ),
    "a gauge of a counter": (
        lambda: gauge("task.failures.total", 1),
        "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge",
        "task_failures_total is a counter",
    ),
    "a monotonic sum of a gauge": (
        lambda: counter("queue.depth", 1),
        "resourceMetrics[0].scopeMetrics[0].metrics[0].sum",
        "queue_depth is a gauge",
    ),
    "a metric the console computes": (
        lambda: gauge("heartbeat.age", 1.0, unit="s"),
        "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0]",
        "computed by the console",
    ),
}


@pytest.mark.parametrize("case", BAD_POINTS, ids=list(BAD_POINTS))
def test_it_refuses_a_bad_point_with_400_naming_it_and_stores_nothing(api, registered_agent, case):
    _, token = registered_agent
    bad, where, reason = BAD_POINTS[case]
    request = export_request(gauge("queue.depth", 1, queue="good"), bad())
    # The bad metric is the second: its location says so.
    where = where.replace("metrics[0]", "metrics[1]")

    response = send(api, request, token)

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == PROTOBUF
    status = rpc_status(response)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "nothing was stored" in status.message
    found = violations(status)
    assert where in found, found
    assert reason in found[where]
    assert not MetricSample.objects.exists()


def test_it_refuses_a_point_about_another_agent(api, registered_agent):
    _, token = registered_agent
    request = export_request(
        gauge("queue.depth", 1, queue="q"), resource={"service.instance.id": "w9"}
    )

    response = send(api, request, token, content_type="application/json")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    found = violations(rpc_status(response))
    where = "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].attributes.agent"
    assert found == {where: "An agent may only report about itself."}


def test_it_refuses_attribute_values_that_are_not_scalars(api, registered_agent):
    _, token = registered_agent
    metric = gauge("queue.depth", 1)
    metric.gauge.data_points[0].attributes.append(
        KeyValue(
            key="queue", value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)]))
        )
    )

    response = send(api, export_request(metric), token)

    assert response.status_code == 400
    assert list(violations(rpc_status(response)).values()) == [
        "An attribute value is a string, number or bool."
    ]


def test_it_refuses_a_huge_number_of_attributes_quickly(api, registered_agent):
    _, token = registered_agent
    metric = gauge("queue.depth", 1)
    metric.gauge.data_points[0].attributes.extend(
        attributes(**{f"a{n}": "x" for n in range(100_000)})
    )
    started = time.perf_counter()

    response = send(api, export_request(metric), token)

    assert response.status_code == 400
    assert time.perf_counter() - started < 5
    assert "At most 16 attributes" in " ".join(violations(rpc_status(response)).values())


def test_it_bounds_the_problems_it_names(api, registered_agent):
    _, token = registered_agent
    request = export_request(gauge("queue.depth", *range(1, 501), colour="red"))

    response = send(api, request, token)

    assert response.status_code == 400
    status = rpc_status(response)
    assert len(violations(status)) == otlp.MAX_NAMED_PROBLEMS
    assert status.message.startswith("500 problem(s)")


def test_it_keeps_its_answer_short_whatever_names_the_client_chose(api, registered_agent):
    _, token = registered_agent
    long_name = "x" * 1_000_000
    request = export_request(
        gauge("queue.depth", 1, queue="q"), gauge(long_name, 1), histogram(long_name + "y")
    )
    bad = gauge("queue.depth", 1)
    bad.gauge.data_points[0].attributes.append(
        KeyValue(key=long_name, value=AnyValue(array_value=ArrayValue()))
    )

    accepted = send(api, request, token)
    refused = send(api, export_request(bad), token)

    assert accepted.status_code == 200
    assert refused.status_code == 400
    assert len(accepted.content) < 1000
    assert len(refused.content) < 1000


def test_it_stores_a_resent_export_once(api, registered_agent):
    _, token = registered_agent
    body = export_request(gauge("queue.depth", 3, queue="q")).SerializeToString()

    first = send(api, body, token)
    again = send(api, body, token)

    assert first.status_code == again.status_code == 200
    assert MetricSample.objects.count() == 1


def test_it_lets_an_operator_with_the_ingest_permission_name_the_agent(api, make_operator):
    _, token = make_operator("admin")
    request = export_request(
        gauge("queue.depth", 1, queue="q"), resource={"service.instance.id": "w7"}
    )

    response = send(api, request, token)

    assert response.status_code == 200, response.content
    assert stored() == [("queue_depth", {"agent": "w7", "queue": "q"}, 1.0)]


def test_it_answers_401_as_an_rpc_status_with_the_challenge(api, seeded):
    response = send(api, export_request(gauge("queue.depth", 1)), "")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="omoi"'
    assert rpc_status(response).code == code_pb2.UNAUTHENTICATED


def test_it_answers_403_to_an_operator_without_the_ingest_permission(api, make_operator):
    _, token = make_operator("viewer")

    response = send(
        api, export_request(gauge("queue.depth", 1)), token, content_type="application/json"
    )

    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    status = rpc_status(response)
    assert status.code == code_pb2.PERMISSION_DENIED
    assert "monitoring.add_metricseries" in status.message


def test_it_answers_415_to_another_media_type_or_encoding(api, registered_agent):
    _, token = registered_agent
    body = export_request(gauge("queue.depth", 1)).SerializeToString()

    other_type = send(api, body, token, content_type="text/plain")
    other_encoding = send(api, body, token, HTTP_CONTENT_ENCODING="br")

    assert other_type.status_code == other_encoding.status_code == 415
    assert "br" in rpc_status(other_encoding).message


def test_it_answers_413_to_a_body_that_expands_past_the_bound(api, registered_agent, settings):
    _, token = registered_agent
    settings.METRIC_MAX_DECOMPRESSED_BYTES = 1000

    response = send(api, b"\0" * 100_000, token, gzipped=True)

    assert response.status_code == 413
    assert rpc_status(response).code == code_pb2.RESOURCE_EXHAUSTED


def test_it_answers_503_with_retry_after_when_the_database_is_away(
    api, registered_agent, monkeypatch
):
    _, token = registered_agent

    def away(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(samples, "ingest", away)
    response = send(api, export_request(gauge("queue.depth", 1, queue="q")), token)

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert rpc_status(response).code == code_pb2.UNAVAILABLE


def test_it_refuses_bodies_that_do_not_decode(api, registered_agent):
    _, token = registered_agent
    body = export_request(gauge("queue.depth", 1, queue="q")).SerializeToString()

    truncated = send(api, body[:-3], token)
    not_json = send(api, b"{not json", token, content_type="application/json")
    wrong_type = send(api, b'{"resourceMetrics": 5}', token, content_type="application/json")

    for response in (truncated, not_json, wrong_type):
        assert response.status_code == 400, response.content
        assert rpc_status(response).code == code_pb2.INVALID_ARGUMENT
    assert not MetricSample.objects.exists()


def test_it_never_answers_500_to_mangled_bodies(api, registered_agent):
    _, token = registered_agent
    good = export_request(
        gauge("queue.depth", 1, 2, queue="q"), counter("task.failures", 2), histogram("x")
    )
    protobuf = good.SerializeToString()
    text = json_format.MessageToJson(good)
    rng = random.Random(7)
    bodies = [protobuf[:cut] for cut in range(0, len(protobuf), 7)]
    for _ in range(150):
        mangled = bytearray(protobuf)
        for _ in range(rng.randint(1, 4)):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        bodies.append(bytes(mangled))
    json_bodies = [
        text.replace('"asInt": "1"', '"asInt": "one"'),
        text.replace('"timeUnixNano": "', '"timeUnixNano": "-'),
        text.replace('"isMonotonic": true', '"isMonotonic": "yes"'),
        text.replace('"attributes": [', '"attributes": 5, "x": ['),
        '{"resourceMetrics": [' * 5000 + "]" * 5000,
        '{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {}}]}]}]}',
        '"a string"',
        "[]",
        "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
    ]
    statuses = set()
    for body in bodies:
        statuses.add(send(api, body, token).status_code)
    for body in json_bodies:
        data = body.encode("utf-8", "surrogatepass")
        statuses.add(send(api, data, token, content_type="application/json").status_code)
    assert statuses <= {200, 400}, statuses
    assert 400 in statuses


@pytest.mark.django_db(transaction=True)
def test_it_serves_the_opentelemetry_sdk_exporter(server, registered_agent):
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    agent, token = registered_agent
    exporter = OTLPMetricExporter(
        endpoint=f"{server.base_url}/v1/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "agent", "service.instance.id": agent.id}),
    )
    meter = provider.get_meter("agent")
    meter.create_gauge("queue.depth", unit="{tasks}").set(4, {"queue": "reviews"})
    meter.create_counter("task.failures", unit="{tasks}").add(2, {"task.kind": "review"})
    meter.create_histogram("task.latency", unit="s").record(1.5)

    try:
        assert provider.force_flush(10_000)
        assert stored() == [
            ("queue_depth", {"agent": agent.id, "queue": "reviews"}, 4.0),
            ("task_failures_total", {"agent": agent.id, "task_kind": "review"}, 2.0),
        ]
    finally:
        provider.shutdown()


@pytest.mark.django_db(transaction=True)
def test_it_answers_429_and_413_on_the_wire_before_django(server, registered_agent, settings):
    _, token = registered_agent
    settings.RATE_LIMIT_PER_TOKEN = "2/minute"
    asgi.ingest_limits.configure()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": PROTOBUF}
    url = f"{server.base_url}/v1/metrics"
    body = export_request(gauge("queue.depth", 1, queue="q")).SerializeToString()

    statuses = [httpx.post(url, content=body, headers=headers).status_code for _ in range(2)]
    refused = httpx.post(url, content=body, headers=headers)
    settings.REQUEST_BODY_LIMITS = {"/v1/metrics": len(body) - 1}
    too_large = httpx.post(url, content=body, headers=headers)

    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert too_large.status_code == 413
