"""Telemetry as the OpenTelemetry semantic conventions and the tools that read it expect (issue 22)."""

from __future__ import annotations

from typing import Any

import httpx
from apps.fullstack_security import create_access_token
from harness import metric_value, wait_until

HEADERS = {"authorization": f"Bearer {create_access_token(1)}"}


def test_the_pool_is_counted_once_under_the_stable_name(serve: Any) -> None:
    """Contrib's SQLAlchemy instrumentation (loaded by opentelemetry-instrument) still emits the deprecated
    db.client.connections.usage beside the agent's db.client.connection.count: a second series of the same
    connections under an old name. Only the agent's is exported."""
    app = serve("fleet_app:app", ready_path="/health")
    assert httpx.get(app.url + "/api/shelves/", headers=HEADERS, timeout=30).status_code == 200
    text = app.metrics_text()
    assert metric_value(text, "db_client_connection_count", db_client_connection_state="idle") == 1
    assert "db_client_connections_usage" not in text
    assert 'otel_scope_name="opentelemetry.instrumentation.sqlalchemy"' not in text


def test_contrib_moving_to_the_stable_name_does_not_count_the_pool_twice() -> None:
    """When contrib's instrumentation emits db.client.connection.count itself, the agent's views drop it:
    a `sum` over the pool's connections stays the agent's figure."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from fastapi_doctor import telemetry

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=telemetry.views())
    attrs = {"db.client.connection.state": "idle", "db.client.connection.pool.name": "main"}
    for scope in ("opentelemetry.instrumentation.sqlalchemy", "fastapi_doctor"):
        provider.get_meter(scope).create_up_down_counter("db.client.connection.count", unit="{connection}").add(1, attrs)
    provider.get_meter("opentelemetry.instrumentation.sqlalchemy").create_up_down_counter(
        "db.client.connections.usage", unit="connections").add(1, {"state": "idle"})
    provider.get_meter("opentelemetry.instrumentation.sqlalchemy").create_histogram(
        "db.client.operation.duration", unit="s").record(0.01)
    data = reader.get_metrics_data()
    exported = sorted((sm.scope.name, m.name) for rm in data.resource_metrics for sm in rm.scope_metrics
                      for m in sm.metrics)
    assert exported == [("fastapi_doctor", "db.client.connection.count"),
                        ("opentelemetry.instrumentation.sqlalchemy", "db.client.operation.duration")]
    provider.shutdown()


def test_contribs_sql_spans_speak_the_stable_database_names_the_agent_uses(serve: Any, otlp: Any) -> None:
    """The wrapper opts contrib's instrumentations in to the stable HTTP and database conventions, so
    their SQL spans carry db.system.name and db.query.text, as the agent's metrics and logs do."""
    app = serve("fleet_app:app", ready_path="/health",
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_TRACES_SAMPLER_ARG": "1.0",
                     "OTEL_BSP_SCHEDULE_DELAY": "100"})
    assert httpx.get(app.url + "/api/shelves/", headers=HEADERS, timeout=30).status_code == 200

    def sql_spans() -> list[Any]:
        return [s for s in otlp.spans() if s.scope == "opentelemetry.instrumentation.sqlalchemy"
                and str(s.attributes.get("db.query.text", s.attributes.get("db.statement", ""))).startswith(
                    "SELECT books.id")]

    span = wait_until(sql_spans, timeout=15)[0]
    assert "db.query.text" in span.attributes, span.attributes
    assert span.attributes["db.system.name"] == "sqlite"
    assert not {"db.statement", "db.system", "db.name"} & set(span.attributes)


def otlp_kinds(otlp: Any) -> dict[str, tuple[str, bool | None, str]]:
    """name -> (OTLP data kind, is_monotonic for sums, unit) of every metric the receiver got."""
    kinds = {}
    for request in list(otlp.metric_requests):
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    kinds[m.name] = (kind, m.sum.is_monotonic if kind == "sum" else None, m.unit)
    return kinds


def test_process_runtime_and_http_server_metrics_are_named_and_typed_as_the_conventions(serve: Any, otlp: Any) -> None:
    """process.unix.file_descriptor.count, process.thread.count and process.memory.usage are UpDownCounters;
    the bytes sent are http.server.response.body.size;
    cpython.gc.* counters by cpython.gc.generation; http.server.active_requests (an UpDownCounter by method
    and scheme) counts the requests in flight, which FastAPI's own metrics (off under the agent) would."""
    import threading

    app = serve("slow_upstream:app", env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
                                          "OTEL_METRIC_EXPORT_INTERVAL": "300"})
    slow = [threading.Thread(target=httpx.get, args=(app.url + "/slow?seconds=4",), kwargs={"timeout": 30})
            for _ in range(2)]
    for thread in slow:
        thread.start()
    active = {"http_request_method": "GET", "url_scheme": "http"}
    wait_until(lambda: metric_value(app.metrics_text(), "http_server_active_requests", **active) == 2, timeout=3.5)
    for thread in slow:
        thread.join()
    wait_until(lambda: metric_value(app.metrics_text(), "http_server_active_requests", **active) == 0)

    text = app.metrics_text()
    assert metric_value(text, "process_unix_file_descriptor_count") >= 3
    assert metric_value(text, "process_thread_count") >= 1
    assert "process_open_file_descriptor_count" not in text
    for generation in ("0", "1", "2"):
        assert metric_value(text, "cpython_gc_collections_total", cpython_gc_generation=generation) is not None
    assert metric_value(text, "cpython_gc_collections_total", cpython_gc_generation="0") >= 1
    assert metric_value(text, "cpython_gc_collected_objects_total", cpython_gc_generation="0") is not None
    assert metric_value(text, "cpython_gc_uncollectable_objects_total", cpython_gc_generation="2") is not None

    wanted = {
        "http.server.active_requests": ("sum", False, "{request}"),
        "http.server.response.body.size": ("histogram", None, "By"),
        "process.unix.file_descriptor.count": ("sum", False, "{file_descriptor}"),
        "process.thread.count": ("sum", False, "{thread}"),
        "process.memory.usage": ("sum", False, "By"),
        "cpython.gc.collections": ("sum", True, "{collection}"),
        "cpython.gc.collected_objects": ("sum", True, "{object}"),
        "cpython.gc.uncollectable_objects": ("sum", True, "{object}"),
    }
    kinds = wait_until(lambda: (lambda k: k if set(wanted) <= set(k) else None)(otlp_kinds(otlp)), timeout=15)
    assert {name: kinds[name] for name in wanted} == wanted
    assert {p["cpython.gc.generation"] for p in otlp.metric_points("cpython.gc.collections")} == {0, 1, 2}
