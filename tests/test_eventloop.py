"""Event loop, threadpool, GC and process signals: blocked loops are found with the line that blocks.

Real servers (uvicorn on asyncio and on uvloop) run tests/apps/loop_app.py, whose blocking helpers live in
another module (loop_helpers.py), so a finding must point at the helper's line, not at the route. A block
is a finding once it recurs (twice): each test calls a blocking route twice. What is not the app's code
is never its blame: start-up (startup_app.py), a paused process, the agent's and OpenTelemetry's code.
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
    time.sleep(0.3)  # once is not yet a finding (a first call may be warming up): the same block twice is
    assert [f for f in app.findings() if f["route"] == "/report"] == []
    assert httpx.get(app.url + "/report", timeout=10).json() == {"report": "report"}

    finding = one_finding(app, "/report", "blocking_io")
    assert finding["location"] == {
        "file": "loop_helpers.py",
        "line": marker_line(HELPERS, "BLOCKING-SLEEP"),
        "function": "fetch_report",
    }
    assert finding["count"] == 2
    evidence = finding["evidence"]
    assert evidence["call"] == "time.sleep"
    assert evidence["threshold_ms"] == 50.0
    # The heartbeat's lateness measures the block from below: a 300 ms sleep is at least 200 ms late.
    assert 200 <= evidence["blocked_ms"] <= 5000
    assert evidence["samples"] >= 1 and evidence["episodes"] == 2
    assert "time.sleep blocked the event loop" in finding["summary"] and "GET /report" in finding["summary"]

    # A CPU-bound helper (pure Python, holding the GIL in slices) is found at its loop.
    for _ in range(2):
        assert httpx.get(app.url + "/checksum", timeout=10).status_code == 200
    cpu = one_finding(app, "/checksum", "blocking_io")
    assert cpu["location"]["file"] == "loop_helpers.py" and cpu["location"]["function"] == "checksum"
    assert def_line(HELPERS, "checksum") < cpu["location"]["line"] <= marker_line(HELPERS, "CPU-LOOP")

    # A block inside a middleware's own code is the middleware's, at the helper it calls.
    for _ in range(2):
        assert httpx.get(app.url + "/audited", timeout=10).status_code == 200
    slow = one_finding(app, "/audited", "slow_middleware")
    assert slow["location"]["line"] == marker_line(HELPERS, "MIDDLEWARE-SLEEP")
    assert slow["evidence"]["middleware"] == "audit" and slow["evidence"]["call"] == "time.sleep"
    assert not [f for f in app.findings("blocking_io") if f["route"] == "/audited"]

    text = app.metrics_text()
    assert lag_above(text, "0.1") >= 6  # the six blocks, seen by the lag histogram
    assert metric_value(text, "fastapi_doctor_eventloop_blocked_total", http_route="/report", root_cause="blocking_io") == 2
    blocked_s = metric_value(
        text, "fastapi_doctor_eventloop_blocked_time_seconds_total", http_route="/report", root_cause="blocking_io"
    )
    assert blocked_s >= evidence["blocked_ms"] / 1000 + 0.2

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

    event = wait_until(report_span_events)[0]  # each sampled request's span has its episode
    assert event["fastapi_doctor.root_cause"] == "blocking_io"
    assert event["fastapi_doctor.call"] == "time.sleep"
    assert event["code.line.number"] == marker_line(HELPERS, "BLOCKING-SLEEP")
    assert event["code.function.name"] == "fetch_report"


def test_serialising_a_large_response_is_large_payload_not_blocking_io(serve):
    app = serve("loop_app:app", env={"FASTAPI_DOCTOR_LOOP_BLOCK_MS": "50"})
    for _ in range(2):
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


def test_a_blocking_call_made_by_generated_code_names_the_users_line(serve):
    """A dataclass's generated __init__ ("<string>") runs the blocking default factory: the line is the
    user's that built the object, not the generated code's."""
    app = serve("loop_app:app", env={"FASTAPI_DOCTOR_LOOP_BLOCK_MS": "50"})
    for _ in range(2):
        assert httpx.post(app.url + "/receipts", timeout=10).json() == {"number": 1}
    finding = one_finding(app, "/receipts", "blocking_io")
    assert finding["location"] == {
        "file": "loop_app.py",
        "line": marker_line(APPS / "loop_app.py", "RECEIPT-INIT"),
        "function": "print_receipt",
    }


def test_start_up_and_work_done_once_are_not_findings(serve):
    """startup_app: importing a large API, the lifespan's start-up work, the first /openapi.json and a
    route's first call warming a cache each block the loop once; only the route that blocks on every
    call is a finding."""
    from harness import AppProcess

    app = AppProcess("startup_app:app", env={"FASTAPI_DOCTOR_LOOP_BLOCK_MS": "50"}).start(timeout=60)
    try:
        _start_up_and_once(app)
    finally:
        app.stop()


def _start_up_and_once(app: Any) -> None:
    assert httpx.get(app.url + "/openapi.json", timeout=60).status_code == 200
    for _ in range(3):
        assert httpx.get(app.url + "/openapi.json", timeout=60).status_code == 200  # cached: no block
        assert httpx.get(app.url + "/orders/tax", timeout=30).json() == {"rate": 0.2}
    for _ in range(2):
        assert httpx.get(app.url + "/orders/export", timeout=30).json() == {"file": "orders.csv"}

    export = one_finding(app, "/orders/export", "blocking_io")
    assert export["location"] == {
        "file": "startup_helpers.py",
        "line": marker_line(APPS / "startup_helpers.py", "EXPORT-SLEEP"),
        "function": "write_export",
    }
    assert export["count"] == 2
    time.sleep(0.3)
    assert [f["id"] for f in app.findings()] == [export["id"]]
    text = app.metrics_text()
    # The first /openapi.json blocked the loop (it is counted), but it is not a recurring problem.
    assert lag_above(text, "0.05") >= 3


def test_a_paused_process_is_counted_not_blamed(serve):
    """Stopping the process (what CFS throttling under a CPU limit, steal or a paused VM do) makes the
    loop late without any code of the app holding it: no blocking_io, a pause counted, a line on the page."""
    import os
    import signal

    app = serve("hello:app")
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    client.get(app.url + "/items/3")
                except httpx.HTTPError:
                    pass

    clients = [threading.Thread(target=load) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        for _ in range(6):
            # Half a second: on a busy machine the process then also waits for a CPU once continued,
            # and the stop must remain most of the loop's lateness to be told from that.
            os.kill(app.proc.pid, signal.SIGSTOP)
            time.sleep(0.5)
            os.kill(app.proc.pid, signal.SIGCONT)
            time.sleep(0.3)
    finally:
        stop.set()
        for client in clients:
            client.join()

    paused = wait_until(lambda: metric_value(app.metrics_text(), "fastapi_doctor_process_paused_total") >= 6 and
                        metric_value(app.metrics_text(), "fastapi_doctor_process_paused_total"))
    assert paused <= 12  # one per stop (a stop can make two ticks late at most)
    assert 6 * 0.3 <= metric_value(app.metrics_text(), "fastapi_doctor_process_paused_time_seconds_total") <= 6 * 1.0
    assert app.findings() == []
    assert app.doctor()["stalls"]["paused"]["episodes"] == paused
    page = httpx.get(app.side_url + "/", timeout=5).text
    assert 'data-stall="paused"' in page and f"paused {int(paused)} time(s)" in page


def test_traced_load_on_a_trivial_route_blames_nothing(serve, otlp):
    """Every request traced and exported over OTLP under wrk: the SDK's and the agent's own work on the
    loop (span start/end, attribute cleaning, the batch processor) is never the app's blame."""
    import shutil
    import subprocess

    assert shutil.which("wrk"), "wrk is needed (.ci/run installs it)"
    app = serve(
        "hello:app",
        env={
            "OTEL_TRACES_SAMPLER_ARG": "1",
            "FASTAPI_DOCTOR_TRACES_PER_SECOND": "0",  # no limit: every request traced
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        },
    )
    subprocess.run(["wrk", "-c32", "-t2", "-d8s", app.url + "/items/3"], check=True, capture_output=True, timeout=60)
    wait_until(lambda: len([s for s in otlp.spans() if s.attributes.get("http.route") == "/items/{item_id}"]) >= 500)
    time.sleep(0.5)
    assert app.findings() == []


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
    for _ in range(3):  # a block that recurs is a finding, unless a collection caused it
        time.sleep(0.2)
        assert httpx.post(app.url + "/gc/collect", timeout=60).status_code == 200
    time.sleep(0.3)
    text = app.metrics_text()
    assert lag_above(text, "0.05") >= 1  # the collection did stall the loop

    blamed = [f for f in app.findings("blocking_io") if f["route"] == "/gc/collect"]
    if gc_detector == "off":
        # Control: without GC pauses the watchdog blames the line running when the collector let go,
        # once the block has recurred as judged (collections go on until it has: on a busy machine an
        # episode can be judged the machine's instead).
        def blamed_now():
            httpx.post(app.url + "/gc/collect", timeout=60)
            return [f for f in app.findings("blocking_io") if f["route"] == "/gc/collect"]

        [finding] = wait_until(blamed_now, timeout=30, interval=0.2)
        assert finding["evidence"]["call"] == "gc.collect"
        return
    assert blamed == []
    assert metric_value(text, "fastapi_doctor_gc_pause_seconds_count", cpython_gc_generation="2") >= 1
    long_pauses = metric_value(text, "fastapi_doctor_gc_pause_seconds_count", cpython_gc_generation="2") - metric_value(
        text, "fastapi_doctor_gc_pause_seconds_bucket", cpython_gc_generation="2", le="0.025"
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
    assert metric_value(text, "process_unix_file_descriptor_count") >= 3
    cpu = metric_value(text, "process_cpu_utilization")
    assert cpu is not None and 0.0 <= cpu <= 1.0
    # The cgroup's CPU throttling, where the process has a cgroup with a CPU controller (as here, in CI).
    from fastapi_doctor.kernel.cgroup import cgroup_throttling

    throttled = metric_value(text, "fastapi_doctor_cgroup_cpu_throttled_total")
    assert (throttled is not None) == (cgroup_throttling() is not None)


def test_the_cgroups_throttling_is_read_from_v2_or_v1(tmp_path):
    from fastapi_doctor.kernel import cgroup

    v2 = tmp_path / "v2.stat"
    v2.write_text("usage_usec 812\nnr_periods 40\nnr_throttled 7\nthrottled_usec 350000\n")
    v1 = tmp_path / "v1.stat"
    v1.write_text("nr_periods 40\nnr_throttled 3\nthrottled_time 1500000000\n")
    no_controller = tmp_path / "unified.stat"
    no_controller.write_text("usage_usec 812\nuser_usec 500\n")
    assert cgroup.read_cpu_stat(str(v2)) == (7, 0.35)
    assert cgroup.read_cpu_stat(str(v1)) == (3, 1.5)
    assert cgroup.read_cpu_stat(str(no_controller)) is None
    assert cgroup.read_cpu_stat(str(tmp_path / "absent")) is None

    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text("4:memory:/pod/x\n1:cpu,cpuacct:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n")
    paths = cgroup.cgroup_cpu_stat_paths(str(proc_cgroup))
    assert paths[:2] == ["/sys/fs/cgroup/cpu/kubepods/pod1/c1/cpu.stat", "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1/cpu.stat"]
    assert "/sys/fs/cgroup/kubepods/pod1/c1/cpu.stat" in paths and paths[-1] == "/sys/fs/cgroup/cpu,cpuacct/cpu.stat"


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
        agent.stop()


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
    import fastapi
    from fastapi.testclient import TestClient

    from fastapi_doctor.signals.eventloop import attach_running_loop

    agent._on_fastapi(fastapi)
    app = fastapi.FastAPI()

    @app.get("/block")
    async def block() -> dict[str, bool]:
        time.sleep(0.2)  # ROUTE-SLEEP
        await asyncio.sleep(0.15)  # the loop ticks; the watchdog closes the episode
        return {"ok": True}

    @app.get("/cooperative")
    async def cooperative_route() -> dict[str, bool]:
        await asyncio.sleep(0.2)
        await asyncio.sleep(0.15)
        return {"ok": True}

    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/cooperative").json() == {"ok": True}
            assert client.get("/block").json() == {"ok": True}
    [finding] = wait_until(lambda: [f for f in agent.findings.all() if f.count == 3], timeout=5)
    assert agent.findings.all() == [finding]  # exactly once, and the cooperative route never
    assert finding.root_cause == "blocking_io" and finding.route == "/block"
    assert finding.location.line == marker_line(Path(__file__), "ROUTE-SLEEP")
    assert finding.evidence["call"] == "time.sleep" and finding.evidence["episodes"] == 3
    assert 100 <= finding.evidence["blocked_ms"] <= 2000

    # Outside any request (a background task), the same: a finding once it recurs.
    async def blocking() -> None:
        assert attach_running_loop()
        await asyncio.sleep(0.1)
        time.sleep(0.2)  # IN-PROCESS-SLEEP
        await asyncio.sleep(0.3)  # the loop ticks; the watchdog closes the episode

    asyncio.run(blocking())
    assert [f.route for f in agent.findings.all()] == ["/block"]
    asyncio.run(blocking())
    outside = wait_until(lambda: [f for f in agent.findings.all() if f.route is None], timeout=5)[0]
    assert outside.count == 2 and outside.location.function.endswith("blocking")
    assert outside.location.line == marker_line(Path(__file__), "IN-PROCESS-SLEEP")
    assert "outside any request" in outside.summary

    blocked = {tuple(sorted(p.attributes.items())): p.value for p in points(agent, "fastapi_doctor.eventloop.blocked")}
    assert blocked == {(("http.route", "/block"), ("root_cause", "blocking_io")): 3, (("root_cause", "blocking_io"),): 2}
    [lag] = points(agent, "fastapi_doctor.eventloop.lag")
    assert lag.count >= 10 and lag.max >= 0.1


def test_the_agents_and_opentelemetrys_own_work_is_their_cost_not_the_apps(agent):
    """A span attribute of 800,000 items: the SDK checks each one on the loop. Its frames are never the
    app's blame; the stall is the agent's cost (a metric, and a line on the doctor page over budget)."""
    import fastapi
    from fastapi.testclient import TestClient
    from opentelemetry.sdk.trace import TracerProvider

    from fastapi_doctor.publish.report.html import render_stalls

    agent._on_fastapi(fastapi)
    tracer = TracerProvider().get_tracer("test")
    rows = [str(i) for i in range(800_000)]  # about 200 ms of the SDK's checks on an idle machine
    app = fastapi.FastAPI()

    @app.get("/traced")
    async def traced() -> dict[str, bool]:
        with tracer.start_as_current_span("export") as span:
            span.set_attribute("rows", rows)
        await asyncio.sleep(0.1)  # the loop ticks; the watchdog closes the episode
        return {"ok": True}

    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/traced").json() == {"ok": True}
    [stalls] = wait_until(lambda: [p for p in points(agent, "fastapi_doctor.agent.loop_stalls") if p.value >= 2], timeout=5)
    assert dict(stalls.attributes) == {}
    assert agent.findings.all() == []
    stalled = agent.signals[0].stalls()["agent"]
    assert stalled["episodes"] == stalls.value and stalled["seconds"] >= 0.1
    assert 'data-stall="agent"' in render_stalls(agent.doctor_document()["stalls"])


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

    watchdog_signal = agent.signals[0]
    for round_ in range(2):  # each TestClient runs the app on a new loop in its own thread
        with TestClient(app) as client:
            assert client.get("/block").json() == {"ok": True}
            wait_until(lambda: watchdog_signal.episodes_seen == round_ + 1, timeout=5)
            [limit] = points(agent, "fastapi_doctor.threadpool.limit")  # read on the loop, published here
            assert limit.value == 40
    [finding] = agent.findings.all()
    assert finding.route == "/block" and finding.count == 2
    assert finding.location.line == marker_line(Path(__file__), "TESTCLIENT-SLEEP")
    wait_until(lambda: not eventloop.hub.heartbeats, timeout=5)  # closed loops are dropped

    assert points(agent, "process.memory.usage")[0].value > 10_000_000
    watchdog = [t for t in threading.enumerate() if t.name == eventloop.WATCHDOG_THREAD_NAME]
    assert len(watchdog) == 1
    agent.stop()  # the signals stop, then every install is undone

    assert not watchdog[0].is_alive()
    assert eventloop.hub.wrap_stack not in agent.fastapi.stack_wrappers
    assert agent.fastapi.app_hooks == [] and eventloop.hub.tick_callbacks == []
    assert eventloop.hub.attach_callbacks == [] and not eventloop.hub.active
    assert gc_pauses.callback not in gc.callbacks
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
        for _ in range(2):
            assert httpx.get(app.url + "/report", timeout=10).status_code == 200
        finding = one_finding(app, "/report", "blocking_io")
        assert finding["location"]["line"] == marker_line(HELPERS, "BLOCKING-SLEEP")
    finally:
        app.stop()


# -- the rule, without a server: what held the loop, from facts about the late stretch ----------------


def test_the_verdict_on_a_late_tick_follows_the_evidence():
    from fastapi_doctor.signals.eventloop import BUSY, CONTENDED, HELD, PAUSED, STARVED, STUCK, judge

    lag, window, watch = 0.3, 0.35, 0.2  # 300 ms late; the tick before came 50 ms before the due time

    def verdict(cpu: float, runq: float | None, process: float, missed: float, longest: float) -> str:
        return judge(lag, window, cpu, runq, process, missed, longest, watch)

    # time.sleep(0.3): the loop thread slept, the watchdog watched it.
    assert verdict(cpu=0.01, runq=0.0, process=0.012, missed=0.0, longest=0.0) == STUCK
    # A pure-Python loop: on a CPU all along, the watchdog had its turns.
    assert verdict(cpu=0.33, runq=0.0, process=0.34, missed=0.01, longest=0.01) == BUSY
    # A C call keeping the GIL (a collection): the loop ran, the watchdog could not for one long stretch.
    assert verdict(cpu=0.33, runq=0.0, process=0.34, missed=0.25, longest=0.25) == HELD
    # The same on a busy machine: the loop got a third of a CPU, the watchdog was still kept out.
    assert verdict(cpu=0.12, runq=0.2, process=0.12, missed=0.25, longest=0.25) == HELD
    # SIGSTOP: nothing ran for one stretch of most of the lateness.
    assert verdict(cpu=0.05, runq=0.0, process=0.06, missed=0.2, longest=0.2) == PAUSED
    # ... a stop just short of half the lateness is not one.
    assert verdict(cpu=0.05, runq=0.0, process=0.06, missed=0.14, longest=0.14) != PAUSED
    # Another thread held the interpreter: the process ran, the loop thread did not.
    assert verdict(cpu=0.02, runq=0.0, process=0.32, missed=0.25, longest=0.25) == CONTENDED
    assert verdict(cpu=0.02, runq=0.0, process=0.32, missed=0.0, longest=0.0) == CONTENDED
    # A starved machine: the loop thread was ready but waited for a CPU most of the time.
    assert verdict(cpu=0.04, runq=0.28, process=0.05, missed=0.05, longest=0.02) == STARVED
    # ... and slept just over half of it: stuck in a call.
    assert verdict(cpu=0.04, runq=0.15, process=0.05, missed=0.05, longest=0.02) == STUCK
    # Without schedstat, stuck only when the watchdog was on time.
    assert verdict(cpu=0.01, runq=None, process=0.012, missed=0.09, longest=0.02) == STUCK
    assert verdict(cpu=0.01, runq=None, process=0.012, missed=0.11, longest=0.02) == STARVED
    # Nothing measured (a tick that did not close the episode): the samples must agree.
    assert judge(lag, window, None, None, None, 0.0, 0.0, watch) == BUSY


def test_a_loop_waiting_for_a_c_librarys_own_threads_is_stuck_in_that_call():
    from fastapi_doctor.signals.eventloop import CONTENDED, PAUSED, STUCK, judge

    lag, window, watch = 0.3, 0.35, 0.2
    # argon2 in an async route: the loop thread sleeps in the call while four lanes of the C library
    # use both cores (0.6 s of CPU in 0.3 s), and the watchdog waits for a CPU now and then.
    for missed, longest in ((0.0, 0.0), (0.25, 0.25)):
        # Threads running Python used that CPU: one of them kept the interpreter from the loop.
        assert judge(lag, window, 0.01, 0.0, 0.61, missed, longest, watch, python_share=1.0) == CONTENDED
        # The library's own threads used it (none of them runs Python): the loop waited in the call.
        assert judge(lag, window, 0.01, 0.0, 0.61, missed, longest, watch, python_share=0.05) == STUCK
    # Nothing of the process ran at all: paused, whoever's threads they are.
    assert judge(lag, window, 0.01, 0.0, 0.02, 0.25, 0.25, watch, python_share=0.0) == PAUSED


def test_generated_code_and_console_scripts_are_not_the_users_code():
    import sys as _sys

    from fastapi_doctor import attribution

    assert not attribution.is_user_file("<string>")
    assert not attribution.is_user_file("<sqlalchemy generated _go() wrapper 0x7f>")
    assert not attribution.is_user_file(str(Path(_sys.executable).parent / "uvicorn"))
    assert attribution.owner(attribution.__file__) == attribution.AGENT
    import opentelemetry.sdk.trace as sdk_trace

    assert attribution.owner(sdk_trace.__file__) == attribution.AGENT
    assert attribution.owner(asyncio.__file__) == attribution.STDLIB
    assert attribution.owner(httpx.__file__) == attribution.LIBRARY
    assert attribution.is_user_file(__file__)

    namespace: dict[str, Any] = {}
    exec(compile("def _go(fn):\n    return fn()\n", "<sqlalchemy generated _go() wrapper>", "exec"), namespace)

    def here() -> Any:
        return attribution.caller_location(skip=0)

    location = namespace["_go"](here)  # GENERATED-CALLER
    assert location.function.endswith("here")
    outer = namespace["_go"](lambda: attribution.frame_location(_sys._getframe(1)))  # GENERATED-CALLER-2
    assert outer.line == marker_line(Path(__file__), "GENERATED-CALLER-2")
