"""The foundation, through real processes: the wrapper loads the agent, FastAPI's own spans arrive,
the side server answers, bad settings are named, failures inside the agent never reach the app."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from harness import BIN, ROOT, concurrent_get, metric_value, wait_until

STOCK_OTEL = ROOT / ".cache" / "stock-otel"


def test_wrapper_loads_agent_and_measures_requests(serve):
    app = serve("hello:app")
    assert httpx.get(app.side_url + "/healthz").text == "ok\n"
    for i in range(3):
        assert httpx.get(f"{app.url}/items/{i}").status_code == 200
    assert httpx.get(app.url + "/nowhere").status_code == 404

    text = app.metrics_text()
    assert metric_value(
        text,
        "http_server_request_duration_seconds_count",
        http_route="/items/{item_id}",
        http_request_method="GET",
        http_response_status_code="200",
    ) == 3
    # Raw paths never become labels; unmatched requests share one series without a route.
    assert "/items/1" not in text
    assert metric_value(text, "http_server_request_duration_seconds_count", http_response_status_code="404") == 1

    doc = app.doctor()
    assert doc["service"] == "test-app"
    assert doc["findings"] == [] and doc["evicted"] == 0


def test_fastapi_is_not_imported_at_startup_and_contrib_middleware_is_absent(serve):
    app = serve("hello:app")
    info = httpx.get(app.url + "/modules").json()
    assert info["fastapi_imported_at_start"] is False
    assert info["fastapi_native"] is True
    assert info["otel_middleware"] is False
    assert info["stack"][0] == "fastapi_doctor.middleware.DoctorMiddleware"


def test_fastapi_native_spans_and_agent_metrics_reach_the_otlp_receiver(serve, otlp):
    app = serve(
        "hello:app",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    assert httpx.get(app.url + "/items/7").status_code == 200

    def server_span():
        return [s for s in otlp.spans() if s.scope == "fastapi" and s.attributes.get("http.route") == "/items/{item_id}"]

    spans = wait_until(server_span)
    span = spans[0]
    assert span.name == "GET /items/{item_id}"
    assert span.attributes["http.response.status_code"] == 200
    assert span.resource["service.name"] == "test-app"
    # FastAPI's operation spans are children of the request span.
    children = wait_until(lambda: [s for s in otlp.spans() if s.parent_span_id == span.span_id])
    assert {"fastapi.endpoint"} <= {s.name for s in children}

    def agent_points():
        return [p for p in otlp.metric_points("http.server.request.duration") if p.get("http.route") == "/items/{item_id}"]

    point = wait_until(agent_points)[0]
    assert point == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
    }


def test_head_sampling_at_admission_follows_ratio_and_traceparent(serve, otlp):
    app = serve(
        "hello:app",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_TRACES_SAMPLER_ARG": "0", "OTEL_BSP_SCHEDULE_DELAY": "200"},
    )
    for i in range(20):
        httpx.get(f"{app.url}/items/{i}")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    httpx.get(app.url + "/items/99", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    spans = wait_until(lambda: [s for s in otlp.spans() if s.scope == "fastapi"])
    # Ratio 0: only the request whose caller sampled it is traced, under the caller's trace.
    assert {s.trace_id for s in spans} == {trace_id}
    # Every request is still measured.
    text = app.metrics_text()
    assert metric_value(text, "http_server_request_duration_seconds_count", http_route="/items/{item_id}") == 21


def test_default_sampling_starts_at_most_two_traces_a_second_under_load(serve, otlp):
    # Defaults: ratio 0.1, at most FASTAPI_DOCTOR_TRACES_PER_SECOND (2) requests a second start a
    # trace (docs/performance.md, decision 2). The ratio alone would trace a tenth of the load.
    app = serve("hello:app", env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"})
    started = time.monotonic()
    responses = concurrent_get(app.url + "/items/1", 2000, concurrency=16)
    elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    def traces() -> set[str]:
        return {s.trace_id for s in otlp.spans() if s.attributes.get("http.route") == "/items/{item_id}"}

    wait_until(traces)
    time.sleep(1.0)  # the last batch (every 200 ms here)
    traced = traces()
    # The bucket starts full (2 tokens) and refills 2 a second.
    assert int(elapsed) <= len(traced) <= 2 + 2 * (elapsed + 1), (len(traced), elapsed)
    assert len(traced) * 5 < 2000 * 0.1  # the limit, not the ratio, decided
    # Every request is still measured.
    text = app.metrics_text()
    assert metric_value(text, "http_server_request_duration_seconds_count", http_route="/items/{item_id}") == 2000


_OWN_PROVIDER_SCRIPT = """
import fastapi
from fastapi.testclient import TestClient
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
app = fastapi.FastAPI()

@app.get("/items/{value}")
def endpoint(value: int):
    return value

FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
client = TestClient(app)
for i in range(20):
    assert client.get(f"/items/{i}").json() == i
print(sum(1 for s in exporter.get_finished_spans() if s.kind.name == "SERVER"))
"""


def _server_spans_under_the_wrapper(tmp_path, script_text: str) -> int:
    """Run ``script_text`` under opentelemetry-instrument; the count of SERVER spans it printed last."""
    script = tmp_path / "own_provider.py"
    script.write_text(script_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
    env["OTEL_EXPORTER_PROMETHEUS_PORT"] = "0"
    result = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, str(script)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.strip().splitlines()[-1])


def test_the_apps_own_tracer_provider_keeps_its_sampling_under_the_wrapper(tmp_path):
    # The agent samples its own traces; a provider the app builds itself samples as the SDK's default
    # (every trace), as it would without the wrapper.
    assert _server_spans_under_the_wrapper(tmp_path, _OWN_PROVIDER_SCRIPT) == 20


_OWN_NATIVE_PROVIDER_SCRIPT = """
import fastapi
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
app = fastapi.FastAPI(telemetry={"tracer_provider": provider})

@app.get("/items/{value}")
def endpoint(value: int):
    return value

client = TestClient(app)
for i in range(20):
    assert client.get(f"/items/{i}").json() == i
print(sum(1 for s in exporter.get_finished_spans() if s.kind.name == "SERVER"))
"""


@pytest.mark.skipif(importlib.util.find_spec("fastapi.telemetry") is None, reason="FastAPI without native telemetry")
def test_fastapi_telemetry_given_the_apps_own_provider_is_not_sampled_by_the_agent(tmp_path):
    assert _server_spans_under_the_wrapper(tmp_path, _OWN_NATIVE_PROVIDER_SCRIPT) == 20


def test_instrument_in_code_without_wrapper(serve):
    app = serve("in_code:app", wrapper=False)
    assert httpx.get(app.url + "/users/5").json() == {"id": 5}
    text = wait_until(lambda: app.metrics_text())
    assert metric_value(text, "http_server_request_duration_seconds_count", http_route="/users/{user_id}") == 1


def test_selected_beside_opentelemetry_distro(serve):
    assert (STOCK_OTEL / "opentelemetry" / "distro").is_dir(), "make test installs opentelemetry-distro here"
    env = {
        "PYTHONPATH": f"{ROOT / 'tests' / 'apps'}{os.pathsep}{STOCK_OTEL}",
        "OTEL_PYTHON_DISTRO": "fastapi_doctor",
        "OTEL_PYTHON_CONFIGURATOR": "fastapi_doctor",
        "OTEL_TRACES_EXPORTER": "none",
    }
    app = serve("hello:app", env=env)
    httpx.get(app.url + "/items/1")
    text = app.metrics_text()
    assert metric_value(text, "http_server_request_duration_seconds_count", http_route="/items/{item_id}") == 1
    # opentelemetry-distro really was importable next to it, and the wrapper did not load it.
    assert "Configuration of configurator not loaded because fastapi_doctor is set" in app.logs()


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("FASTAPI_DOCTOR_LOOP_BLOCK_MS", "fast", "a number of milliseconds from 1 to 60000"),
        ("FASTAPI_DOCTOR_LEAK_SECONDS", "-3", "a number of seconds from 0.1 to 86400"),
        ("FASTAPI_DOCTOR_ENABLED", "maybe", "true or false"),
        ("FASTAPI_DOCTOR_MAX_FINDINGS", "1.5", "a whole number from 1 to 100000"),
    ],
)
def test_invalid_setting_is_named_once_and_the_app_serves(serve, variable, value, allowed):
    app = serve("hello:app", env={variable: value})
    assert httpx.get(app.url + "/").json() == {"status": "ok"}
    assert httpx.get(app.side_url + "/healthz").status_code == 200
    message = f"{variable}={value!r} is invalid: allowed {allowed}; using the default"
    assert app.logs().count(message) == 1

    result = subprocess.run(
        [str(BIN / "fastapi-doctor"), "check-config"], env={**os.environ, variable: value}, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert message in result.stderr


def test_check_config_passes_on_a_good_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTAPI_DOCTOR_")}
    result = subprocess.run([str(BIN / "fastapi-doctor"), "check-config"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_side_server_port_taken_app_keeps_serving(serve):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        app = serve("hello:app", env={"OTEL_EXPORTER_PROMETHEUS_PORT": str(port)})
        assert httpx.get(app.url + "/items/3").json() == {"id": 3}
        logs = app.logs()
        assert f"OTEL_EXPORTER_PROMETHEUS_PORT={port}): address already in use" in logs
        assert logs.count("side server cannot listen") == 1
    finally:
        blocker.close()


def _observable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.items() if k.lower() != "date"]
    return response.status_code, headers, response.content


def test_failures_inside_the_agent_never_change_the_response(serve):
    paths = ["/", "/items/3", "/items/x", "/nowhere", "/boom"]
    bare = serve("hello:app", wrapper=False)
    expected = {p: _observable(httpx.get(bare.url + p)) for p in paths}

    faulty = serve("faulty:app")
    for _ in range(2):
        for p in paths:
            assert _observable(httpx.get(faulty.url + p)) == expected[p], p
    logs = faulty.logs()
    # Contained: logged once per kind, counted, the app served every request.
    assert logs.count("internal error in request metrics") == 1
    assert logs.count("internal error in faulty_hook") == 1
    text = faulty.metrics_text()
    # One per request: the ten above and the harness's readiness probe.
    assert metric_value(text, "fastapi_doctor_internal_errors_total", fastapi_doctor_component="request metrics") == 11


def test_objects_from_before_the_app_are_frozen_and_the_apps_are_not(serve):
    # Under the wrapper the agent starts before the app is imported: what exists then (the interpreter,
    # OpenTelemetry, gRPC, the agent) is moved out of the collector's reach; the app's objects are not.
    info = httpx.get(serve("hello:app").url + "/gc").json()
    assert info["frozen"] > 10_000
    assert info["app_collectable"] is True and info["fastapi_collectable"] is True
    left_alone = httpx.get(serve("hello:app", env={"FASTAPI_DOCTOR_GC_FREEZE": "false"}).url + "/gc").json()
    assert left_alone["frozen"] == 0


def test_agent_disabled_runs_the_app_untouched(serve):
    app = serve("hello:app", env={"FASTAPI_DOCTOR_ENABLED": "false"})
    info = httpx.get(app.url + "/modules").json()
    assert info["stack"][0] != "fastapi_doctor.middleware.DoctorMiddleware"
    with pytest.raises(httpx.ConnectError):
        httpx.get(app.side_url + "/healthz")


def test_report_cli_prints_findings_and_fails_clearly(serve):
    app = serve("hello:app")
    ok = subprocess.run([str(BIN / "fastapi-doctor"), "report", "--url", app.side_url, "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and '"findings": []' in ok.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    bad = subprocess.run([str(BIN / "fastapi-doctor"), "report", "--url", f"http://127.0.0.1:{dead}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot reach the agent" in bad.stderr
    not_json = subprocess.run([str(BIN / "fastapi-doctor"), "report", "--url", app.url + "/items/1?"], capture_output=True, text=True)
    assert not_json.returncode == 2


def test_agent_package_imports_no_app_library():
    code = "import sys, fastapi_doctor, fastapi_doctor.distro, fastapi_doctor.cli; " \
           "print(sorted(m for m in ('fastapi','starlette','sqlalchemy','pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# Semantic-convention names ending in ".count": promtool's lint wants "_count" only on histograms
# and summaries. The conventions win (dashboards and other tools look for these names).
SEMCONV_COUNT_GAUGES = {"db_client_connection_count", "process_unix_file_descriptor_count", "process_thread_count"}


def test_metrics_page_passes_promtool(serve):
    app = serve("hello:app")
    for path in ("/", "/items/1", "/nowhere", "/boom"):
        httpx.get(app.url + path)
    text = app.metrics_text()
    assert "http_server_request_duration_seconds_bucket" in text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    unexpected = [
        line for line in problems
        if not (line.split(" ", 1)[0] in SEMCONV_COUNT_GAUGES and 'should not have "_count" suffix' in line)
    ]
    assert unexpected == [], problems


def test_sdk_metrics_and_lean_histograms_both_reach_the_otlp_receiver(serve, otlp):
    # Exporters key metrics by instrumentation scope: the lean histograms must join the agent's
    # scope, not replace its SDK instruments (counters, gauges).
    app = serve(
        "hello:app",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "500"},
    )
    httpx.get(app.url + "/items/1")
    # process.memory.usage is an SDK instrument of the agent's scope; the request duration a lean one.
    wait_until(lambda: {"process.memory.usage", "http.server.request.duration"} <= otlp.metric_names(), timeout=15)


def test_get_findings_in_code():
    code = ("import fastapi_doctor, fastapi_doctor.findings; "
            "print(callable(fastapi_doctor.get_findings), fastapi_doctor.get_findings())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True []"
