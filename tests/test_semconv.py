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
