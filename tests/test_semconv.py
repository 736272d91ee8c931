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


def operation_durations(text: str) -> list[dict[str, str]]:
    """The label sets of db.client.operation.duration's _count series on a /metrics page (without the
    empty labels the exporter gives a series for another series' attributes)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [{k: v for k, v in s.labels.items() if v} for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "db_client_operation_duration_seconds_count" and s.value > 0]


def test_statements_of_a_sync_engine_have_the_conventions_operation_duration(serve: Any) -> None:
    """db.client.operation.duration (the conventions' histogram, seconds) for a sync SQLAlchemy engine on
    SQLite, by operation, never by route."""
    app = serve("fleet_app:app", ready_path="/health")
    assert httpx.get(app.url + "/api/shelves/", headers=HEADERS, timeout=30).status_code == 200
    wait_until(lambda: operation_durations(app.metrics_text()), timeout=15)
    text = app.metrics_text()
    assert (metric_value(text, "db_client_operation_duration_seconds_count",
                         db_system_name="sqlite", db_operation_name="SELECT") or 0) > 0
    assert all("http_route" not in labels and "error_type" not in labels for labels in operation_durations(text))
    buckets = {s.split('le="')[1].split('"')[0] for s in text.splitlines()
               if s.startswith("db_client_operation_duration_seconds_bucket")}
    assert buckets == {"0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1.0", "5.0", "10.0", "+Inf"}


def test_statements_of_an_async_engine_on_postgresql_have_namespace_server_and_error_type(
        serve: Any, postgres: Any, pg_database: str) -> None:
    """An async SQLAlchemy engine (asyncpg driver) on PostgreSQL: the database's name, the server, and the
    driver's exception class on a statement the database refused."""
    app = serve("db_app:app", env={"DB_URL": postgres.url(pg_database)})
    assert httpx.get(app.url + "/items/3", timeout=30).status_code == 200
    assert httpx.get(app.url + "/missing_table", timeout=30).status_code == 500
    wanted = {"db_system_name": "postgresql", "db_namespace": pg_database, "server_address": postgres.host,
              "server_port": str(postgres.port)}

    def refused() -> list[dict[str, str]]:
        return [labels for labels in operation_durations(app.metrics_text())
                if "error_type" in labels and wanted.items() <= labels.items()]

    failed = wait_until(refused, timeout=15)
    assert failed[0]["db_operation_name"] == "SELECT"
    assert "ProgrammingError" in failed[0]["error_type"] or "UndefinedTable" in failed[0]["error_type"], failed
    ok = [labels for labels in operation_durations(app.metrics_text())
          if "error_type" not in labels and labels.get("db_operation_name") == "SELECT"]
    assert ok and all(wanted.items() <= labels.items() for labels in ok), ok
