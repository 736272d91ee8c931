"""Event loop, threadpool, GC and process signals: blocked loops are found with the line that blocks.

Real servers (uvicorn on asyncio and on uvloop) run tests/apps/loop_app.py, whose blocking helpers live in
another module (loop_helpers.py), so a finding must point at the helper's line, not at the route.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import APPS, concurrent_get, metric_value, wait_until

HELPERS = APPS / "loop_helpers.py"
EVENTLOOP_EVIDENCE = "blocked_ms"  # evidence key of the event-loop watchdog's findings
# Who makes the request's span: FastAPI's native telemetry (0.165+), else contrib's instrumentation.
SERVER_SPAN_SCOPES = ("fastapi", "opentelemetry.instrumentation.fastapi")


def marker_line(path: Path, marker: str) -> int:
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if f"# {marker}" in text:
            return number
    raise AssertionError(f"{marker} not in {path}")


def def_line(path: Path, function: str) -> int:
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if text.lstrip().startswith((f"def {function}(", f"async def {function}(")):
            return number
    raise AssertionError(f"{function} not in {path}")


def one_finding(app: Any, route: str, root_cause: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [f for f in app.findings(root_cause) if f["route"] == route]

    [finding] = wait_until(found, timeout=10)
    return finding


def lag_above(text: str, seconds: str) -> float:
    total = metric_value(text, "fastapi_doctor_eventloop_lag_seconds_count") or 0.0
    return total - (metric_value(text, "fastapi_doctor_eventloop_lag_seconds_bucket", le=seconds) or 0.0)


def series_labels(text: str, name: str) -> list[dict[str, str]]:
    """Labels of every sample of ``name``, without the exporter's scope labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_")}
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


# -- real servers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_blocking_calls_are_found_with_the_helpers_line(serve, otlp, loop):
    app = serve(
        "loop_app:app",
        server_args=["--loop", loop],
        env={
            "FASTAPI_DOCTOR_LOOP_BLOCK_MS": "50",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    assert httpx.get(app.url + "/report", timeout=10).json() == {"report": "report"}

    finding = one_finding(app, "/report", "blocking_io")
    assert finding["location"] == {
        "file": "loop_helpers.py",
        "line": marker_line(HELPERS, "BLOCKING-SLEEP"),
        "function": "fetch_report",
    }
    assert finding["count"] == 1
    evidence = finding["evidence"]
    assert evidence["call"] == "time.sleep"
    assert evidence["threshold_ms"] == 50.0
    # The heartbeat's lateness measures the block from below: a 300 ms sleep is at least 200 ms late.
    assert 200 <= evidence["blocked_ms"] <= 5000
    assert evidence["samples"] >= 1 and evidence["episodes"] == 1
    assert "time.sleep blocked the event loop" in finding["summary"] and "GET /report" in finding["summary"]

    # A CPU-bound helper (pure Python, holding the GIL in slices) is found at its loop.
    assert httpx.get(app.url + "/checksum", timeout=10).status_code == 200
    cpu = one_finding(app, "/checksum", "blocking_io")
    assert cpu["location"]["file"] == "loop_helpers.py" and cpu["location"]["function"] == "checksum"
    assert def_line(HELPERS, "checksum") < cpu["location"]["line"] <= marker_line(HELPERS, "CPU-LOOP")

    # A block inside a middleware's own code is the middleware's, at the helper it calls.
    assert httpx.get(app.url + "/audited", timeout=10).status_code == 200
    slow = one_finding(app, "/audited", "slow_middleware")
    assert slow["location"]["line"] == marker_line(HELPERS, "MIDDLEWARE-SLEEP")
    assert slow["evidence"]["middleware"] == "audit" and slow["evidence"]["call"] == "time.sleep"
    assert not [f for f in app.findings("blocking_io") if f["route"] == "/audited"]

    text = app.metrics_text()
    assert lag_above(text, "0.1") >= 3  # the three blocks, seen by the lag histogram
    assert metric_value(text, "fastapi_doctor_eventloop_blocked_total", http_route="/report", root_cause="blocking_io") == 1
    blocked_s = metric_value(
        text, "fastapi_doctor_eventloop_blocked_time_seconds_total", http_route="/report", root_cause="blocking_io"
    )
    assert blocked_s == pytest.approx(evidence["blocked_ms"] / 1000, abs=0.001)

    # Exact attribute sets (the cardinality contract): a route template and a root cause, nothing else.
    assert {"http_route": "/report", "root_cause": "blocking_io"} in series_labels(text, "fastapi_doctor_eventloop_blocked_total")
    assert all(set(labels) == {"http_route", "root_cause"} for labels in series_labels(text, "fastapi_doctor_eventloop_blocked_total"))

    # The request's span carries the episode as an event, with the line.
    def report_span_events() -> list[dict[str, Any]]:
        return [
            attrs
            for s in otlp.spans()
            if s.scope in SERVER_SPAN_SCOPES and s.attributes.get("http.route") == "/report" and not s.parent_span_id
            for name, attrs in s.events
            if name == "fastapi_doctor.eventloop.blocked"
        ]

    [event] = wait_until(report_span_events)
    assert event["fastapi_doctor.root_cause"] == "blocking_io"
    assert event["fastapi_doctor.call"] == "time.sleep"
    assert event["code.line.number"] == marker_line(HELPERS, "BLOCKING-SLEEP")
    assert event["code.function.name"] == "fetch_report"


def test_serialising_a_large_response_is_large_payload_not_blocking_io(serve):
    app = serve("loop_app:app", env={"FASTAPI_DOCTOR_LOOP_BLOCK_MS": "50"})
    response = httpx.get(app.url + "/export", timeout=30)
    assert len(response.content) > 2_000_000

    finding = one_finding(app, "/export", "large_payload")
    assert finding["evidence"]["call"] in (
        "fastapi.encoders.jsonable_encoder",
        "fastapi.routing.serialize_response",
        "starlette.responses.JSONResponse.render",
    )
    # No user frame is running while FastAPI serialises: the finding points at the endpoint.
    assert finding["location"] == {
        "file": "loop_app.py",
        "line": def_line(APPS / "loop_app.py", "export"),
        "function": "export",
    }
    assert "Serialising the response of GET /export" in finding["summary"]
    assert not [f for f in app.findings("blocking_io") if f["route"] == "/export"]


def test_healthy_async_routes_under_load_make_no_finding(serve):
    app = serve("loop_app:app")
    responses = concurrent_get(app.url + "/healthy", 300, concurrency=16)
    assert all(r.status_code == 200 for r in responses)
    time.sleep(0.3)

    assert [f for f in app.findings() if EVENTLOOP_EVIDENCE in f["evidence"]] == []
    text = app.metrics_text()
    total = metric_value(text, "fastapi_doctor_eventloop_lag_seconds_count")
    assert total and total >= 10  # the heartbeat ran throughout
    # p99 of the lag well under the block threshold (generous: the machine is shared).
    assert lag_above(text, "0.1") <= 0.01 * total
    assert metric_value(text, "fastapi_doctor_eventloop_blocked_total") is None


def test_a_full_threadpool_names_the_sync_route_and_its_line(serve):
    app = serve("loop_app:app", env={"FASTAPI_DOCTOR_THREADPOOL_WAIT_SECONDS": "0.5"})
    waiting_seen: list[float] = []

    def load() -> None:
        concurrent_get(app.url + "/pdf", 12, concurrency=12)  # 4 threads, 12 one-second calls

    client = threading.Thread(target=load)
    client.start()
    try:
        waiting_seen.append(
            wait_until(lambda: metric_value(app.metrics_text(), "fastapi_doctor_threadpool_waiting"), timeout=10)
        )
        busy = metric_value(app.metrics_text(), "fastapi_doctor_threadpool_busy")
    finally:
        client.join()

    assert waiting_seen[0] > 0 and busy == 4
    finding = one_finding(app, "/pdf", "blocking_io")
    assert finding["location"] == {"file": "loop_helpers.py", "line": marker_line(HELPERS, "THREAD-SLEEP"), "function": "render_pdf"}
    evidence = finding["evidence"]
    assert evidence["signal"] == "threadpool"
    assert evidence["limit"] == 4 and evidence["busy"] == 4 and evidence["waiting"] >= 1
    assert evidence["routes"] == {"/pdf": 4} and evidence["call"] == "time.sleep"
    assert finding["count"] == 1  # one saturation episode, one occurrence
    assert "GET /pdf" in finding["summary"]

    text = app.metrics_text()
    assert metric_value(text, "fastapi_doctor_threadpool_limit") == 4
    assert metric_value(text, "fastapi_doctor_threadpool_waiting") == 0


@pytest.mark.parametrize("gc_detector", ["on", "off"])
def test_a_long_gc_pause_is_not_blamed_on_the_code_it_interrupted(serve, gc_detector):
    env = {"FASTAPI_DOCTOR_LOOP_BLOCK_MS": "30"}
    if gc_detector == "off":
        env["FASTAPI_DOCTOR_DISABLED_DETECTORS"] = "gc"
    app = serve("loop_app:app", env=env)
    assert httpx.post(app.url + "/gc/heap", timeout=60).json() == {"objects": 1_000_000}
    time.sleep(0.2)
    assert httpx.post(app.url + "/gc/collect", timeout=60).status_code == 200
    time.sleep(0.3)
    text = app.metrics_text()
    assert lag_above(text, "0.05") >= 1  # the collection did stall the loop

    blamed = [f for f in app.findings("blocking_io") if f["route"] == "/gc/collect"]
    if gc_detector == "off":
        # Control: without GC pauses the watchdog blames the line running when the collector let go.
        [finding] = wait_until(lambda: [f for f in app.findings("blocking_io") if f["route"] == "/gc/collect"])
        assert finding["evidence"]["call"] == "gc.collect"
        return
    assert blamed == []
    assert metric_value(text, "fastapi_doctor_gc_pause_seconds_count", gc_generation="2") >= 1
    long_pauses = metric_value(text, "fastapi_doctor_gc_pause_seconds_count", gc_generation="2") - metric_value(
        text, "fastapi_doctor_gc_pause_seconds_bucket", gc_generation="2", le="0.025"
    )
    assert long_pauses >= 1
    # The episode is still counted, without a root cause (its route only when the watchdog saw the
    # request running after the pause, which a busy machine can make it miss).
    assert [labels for labels in series_labels(text, "fastapi_doctor_eventloop_blocked_total") if not labels.get("root_cause")]


def test_process_gauges_are_read_on_collection(serve):
    app = serve("hello:app")
    text = app.metrics_text()
    assert metric_value(text, "process_memory_usage_bytes") > 10_000_000
    assert metric_value(text, "process_thread_count") >= 2
    assert metric_value(text, "process_open_file_descriptor_count") >= 3
    cpu = metric_value(text, "process_cpu_utilization")
    assert cpu is not None and 0.0 <= cpu <= 1.0


# -- in process: the watchdog pair, several loops, and the undo --------------------------------------


@pytest.fixture
def agent() -> Iterator[Any]:
    """A real Agent with a private meter (no global providers, no side server) and these signals on."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from fastapi_doctor import _agent, config
    from fastapi_doctor.lean_metrics import LeanMetrics
    from fastapi_doctor.middleware import RequestMetrics
    from fastapi_doctor.signals.eventloop import EventLoopSignal
    from fastapi_doctor.signals.gc_pauses import GCSignal
    from fastapi_doctor.signals.process import ProcessSignal
    from fastapi_doctor.signals.threadpool import ThreadpoolSignal

    settings, errors = config.load(environ={}, overrides={"loop_block_ms": 50, "heartbeat_ms": 20})
    assert errors == []
    agent = _agent.Agent(settings)
    agent.reader = InMemoryMetricReader()
    agent.meter = MeterProvider(metric_readers=[agent.reader]).get_meter("test")
    agent.request_metrics = RequestMetrics(LeanMetrics("test", "0"))
    agent.running = True
    agent.signals = [EventLoopSignal(), ThreadpoolSignal(), GCSignal(), ProcessSignal()]
    for signal in agent.signals:
        signal.instrument(agent)
    try:
        yield agent
    finally:
        for signal in reversed(agent.signals):
            signal.uninstrument()
        agent.running = False
        if agent.fastapi is not None:
            agent.fastapi.uninstrument()


def points(agent: Any, name: str) -> list[Any]:
    data = agent.reader.get_metrics_data()
    return [
        p
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points
    ]


def test_time_sleep_in_the_loop_is_reported_once_and_await_never(agent):
    from fastapi_doctor.signals.eventloop import attach_running_loop

    async def blocking() -> None:
        assert attach_running_loop()
        await asyncio.sleep(0.1)
        time.sleep(0.2)  # IN-PROCESS-SLEEP
        await asyncio.sleep(0.3)  # the loop ticks; the watchdog closes the episode

    async def cooperative() -> None:
        assert attach_running_loop()
        await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)

    asyncio.run(cooperative())
    assert agent.findings.all() == []

    asyncio.run(blocking())
    [finding] = agent.findings.all()
    assert finding.root_cause == "blocking_io" and finding.count == 1 and finding.route is None
    assert finding.location.line == marker_line(Path(__file__), "IN-PROCESS-SLEEP")
    assert finding.location.function.endswith("blocking")
    assert finding.evidence["call"] == "time.sleep"
    assert 100 <= finding.evidence["blocked_ms"] <= 2000
    assert "outside any request" in finding.summary

    [blocked] = points(agent, "fastapi_doctor.eventloop.blocked")
    assert dict(blocked.attributes) == {"root_cause": "blocking_io"} and blocked.value == 1
    [lag] = points(agent, "fastapi_doctor.eventloop.lag")
    assert lag.count >= 10 and lag.max >= 0.1


def test_each_loop_of_the_app_is_watched_and_uninstrument_undoes_everything(agent):
    import fastapi
    from fastapi.testclient import TestClient

    from fastapi_doctor.signals import eventloop, gc_pauses

    agent._on_fastapi(fastapi)  # the FastAPI hooks, as when the app imports fastapi
    assert eventloop.hub.wrap_stack in agent.fastapi.stack_wrappers

    app = fastapi.FastAPI()

    @app.get("/block")
    async def block() -> dict[str, bool]:
        time.sleep(0.15)  # TESTCLIENT-SLEEP
        return {"ok": True}

    for round_ in range(2):  # each TestClient runs the app on a new loop in its own thread
        with TestClient(app) as client:
            assert client.get("/block").json() == {"ok": True}
            wait_until(lambda: [f for f in agent.findings.all() if f.count == round_ + 1], timeout=5)
            [limit] = points(agent, "fastapi_doctor.threadpool.limit")  # read on the loop, published here
            assert limit.value == 40
    [finding] = agent.findings.all()
    assert finding.route == "/block" and finding.count == 2
    assert finding.location.line == marker_line(Path(__file__), "TESTCLIENT-SLEEP")
    wait_until(lambda: not eventloop.hub.heartbeats, timeout=5)  # closed loops are dropped

    assert points(agent, "process.memory.usage")[0].value > 10_000_000
    watchdog = [t for t in threading.enumerate() if t.name == eventloop.WATCHDOG_THREAD_NAME]
    assert len(watchdog) == 1
    for signal in reversed(agent.signals):
        signal.uninstrument()
    agent.signals = []

    assert not watchdog[0].is_alive()
    assert eventloop.hub.wrap_stack not in agent.fastapi.stack_wrappers
    assert agent.fastapi.app_hooks == [] and eventloop.hub.tick_callbacks == []
    assert eventloop.hub.attach_callbacks == [] and not eventloop.hub.active
    assert gc_pauses._callback not in gc.callbacks
    assert points(agent, "process.memory.usage") == [] and points(agent, "process.thread.count") == []
    # Nothing is watched or reported any more, even on the app whose stack still holds the probe.
    with TestClient(app) as client:
        assert client.get("/block").json() == {"ok": True}
    time.sleep(0.2)
    assert eventloop.hub.heartbeats == {} and agent.findings.all()[0].count == 2


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_an_idle_loop_is_told_from_a_blocked_one(agent, kind):
    """A starved process (the watchdog runs, the loop thread waits in its selector) is not a block, even
    when the code that started the loop is the user's."""
    import sys

    import uvloop

    from fastapi_doctor import attribution
    from fastapi_doctor.signals.eventloop import _loop_busy, attach_running_loop, hub

    seen: dict[str, bool | None] = {}

    async def main() -> None:
        assert attach_running_loop()
        hb = hub.heartbeats[asyncio.get_running_loop()]
        loop_thread = threading.get_ident()

        def look(name: str) -> None:
            frame = sys._current_frames()[loop_thread]
            seen[name] = _loop_busy(hb, frame, attribution.capture(frame))

        threading.Timer(0.05, look, args=("idle",)).start()
        await asyncio.sleep(0.15)
        threading.Timer(0.05, look, args=("blocked",)).start()
        time.sleep(0.15)

    (uvloop.run if kind == "uvloop" else asyncio.run)(main())
    assert seen == {"idle": False, "blocked": True}


def test_a_prefork_worker_has_its_own_watchdog(serve):
    """Under gunicorn the agent starts in the master; threads do not survive the fork into the worker."""
    from harness import BIN, AppProcess

    app = AppProcess("loop_app:app", env={"FASTAPI_DOCTOR_LOOP_BLOCK_MS": "50"}, command=["-"])
    app.command = [str(BIN / "opentelemetry-instrument"), str(BIN / "gunicorn"), "loop_app:app", "-w", "1",
                   "-k", "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{app.port}"]
    app.start()
    try:
        assert httpx.get(app.url + "/report", timeout=10).status_code == 200
        finding = one_finding(app, "/report", "blocking_io")
        assert finding["location"]["line"] == marker_line(HELPERS, "BLOCKING-SLEEP")
    finally:
        app.stop()
