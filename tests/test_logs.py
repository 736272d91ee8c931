"""Request and slow-query logs that carry the trace (issue 12), through real servers, a real SQLite
and a real OTLP/gRPC receiver; the rate limiter and the undo in-process."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import APPS, BIN, AppProcess, OTLPReceiver, concurrent_get, metric_value, start_otlp_receiver, wait_until

SECRET = "hunter2-Sup3rSecret"
APP_LINES = (APPS / "logs_app.py").read_text().splitlines()
SLOW_QUERY_LINE = next(n for n, line in enumerate(APP_LINES, 1) if "# the slow statement" in line)
ASYNC_QUERY_LINE = next(n for n, line in enumerate(APP_LINES, 1) if line.endswith("# async"))


def json_records(logs: str, logger: str | None = None) -> list[dict[str, Any]]:
    """The agent's JSON lines in a server's output (other lines are uvicorn's and the app's)."""
    out = []
    for line in logs.splitlines():
        if line.startswith("{"):
            record = json.loads(line)  # every agent line must parse
            if logger is None or record["logger"] == logger:
                out.append(record)
    return out


def otlp_log_records(otlp: OTLPReceiver) -> list[dict[str, Any]]:
    out = []
    for request in list(otlp.log_requests):
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    attrs = {}
                    for kv in r.attributes:
                        kind = kv.value.WhichOneof("value")
                        value = getattr(kv.value, kind)
                        if kind == "array_value":
                            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
                        attrs[kv.key] = value
                    out.append(
                        {
                            "scope": sl.scope.name,
                            "event": r.event_name,
                            "trace_id": r.trace_id.hex(),
                            "span_id": r.span_id.hex(),
                            "severity": r.severity_text,
                            "body": r.body.string_value,
                            "attributes": attrs,
                        }
                    )
    return out


def request_span(otlp: OTLPReceiver, route: str) -> Any:
    """FastAPI's server span of the (single) request to ``route``."""
    spans = wait_until(
        lambda: [s for s in otlp.spans() if s.scope == "fastapi" and not s.parent_span_id and s.attributes.get("http.route") == route]
    )
    assert len(spans) == 1, spans
    return spans[0]


# -- one sampled server for the request and query records ------------------------------------------


@pytest.fixture(scope="module")
def otlp_module() -> Iterator[OTLPReceiver]:
    receiver = start_otlp_receiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def sampled_app(otlp_module: OTLPReceiver) -> Iterator[AppProcess]:
    app = AppProcess(
        "logs_app:app",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_module.endpoint,
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "FASTAPI_DOCTOR_LOG_FORMAT": "json",
            "FASTAPI_DOCTOR_SLOW_REQUEST_MS": "250",
            "LOGS_APP_SLOW_S": "0.4",
            "FASTAPI_DOCTOR_SLOW_QUERY_MS": "200",
            "LOGS_APP_QUERY_MS": "300",
        },
        ready_path="/docs",
    ).start()
    for path in ("/fast", f"/slow?token={SECRET}", "/error", "/finding", f"/query?token={SECRET}",
                 f"/query_async?token={SECRET}"):
        httpx.get(app.url + path, headers={"authorization": f"Bearer {SECRET}"}, timeout=10)
    yield app
    app.stop()


def test_slow_failing_and_finding_requests_write_one_record_with_their_span(sampled_app, otlp_module):
    records = wait_until(lambda: len(json_records(sampled_app.logs(), "fastapi_doctor.requests")) >= 5 and
                         json_records(sampled_app.logs(), "fastapi_doctor.requests"))
    by_route: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_route.setdefault(record["route"], []).append(record)
    # A fast 200 writes nothing by default; the requests of the slow queries are logged as slow.
    assert sorted(by_route) == ["/error", "/finding", "/query", "/query_async", "/slow"]
    assert all(len(v) == 1 for v in by_route.values()), by_route

    expected = {
        "/slow": (["slow"], 200, [], "WARNING"),
        "/error": (["error"], 500, [], "ERROR"),
        "/finding": (["finding"], 200, ["n_plus_one"], "WARNING"),
    }
    for route, (reasons, status, root_causes, level) in expected.items():
        record = by_route[route][0]
        span = request_span(otlp_module, route)
        assert (record["reasons"], record["status"], record["root_causes"], record["level"]) == (
            reasons, status, root_causes, level
        )
        assert record["method"] == "GET" and record["kind"] == "request"
        assert record["response_bytes"] > 0 and record["duration_ms"] > 0
        assert (record["trace_id"], record["span_id"]) == (span.trace_id, span.span_id), route
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert by_route["/slow"][0]["duration_ms"] >= 250

    # The same records reach the collector, on the same trace, with semantic-convention attributes.
    def exported_requests() -> list[dict[str, Any]]:
        found = [r for r in otlp_log_records(otlp_module) if r["event"] == "fastapi_doctor.request"]
        return found if len(found) >= 4 else []

    exported = wait_until(exported_requests)
    slow = next(r for r in exported if r["attributes"].get("http.route") == "/slow")
    assert slow["trace_id"] == by_route["/slow"][0]["trace_id"]
    assert slow["attributes"]["http.request.method"] == "GET"
    assert slow["attributes"]["http.response.status_code"] == 200
    assert slow["attributes"]["fastapi_doctor.reasons"] == ["slow"]
    assert slow["scope"] == "fastapi_doctor.requests" and slow["severity"] == "WARNING"


def test_slow_query_is_logged_once_as_a_fingerprint_with_its_line_and_trace(sampled_app, otlp_module):
    queries = wait_until(lambda: len(json_records(sampled_app.logs(), "fastapi_doctor.queries")) >= 2 and
                         json_records(sampled_app.logs(), "fastapi_doctor.queries"))
    # One record per slow statement; the fast statement of /query is not logged.
    assert sorted(q["route"] for q in queries) == ["/query", "/query_async"], queries
    query = next(q for q in queries if q["route"] == "/query")
    assert query["statement"] == "SELECT sleep_ms(?) WHERE ? = ? OR ? = ?"
    assert query["location"] == {"file": "logs_app.py", "line": SLOW_QUERY_LINE, "function": "query"}
    assert query["pool"] == "sqlite:///:memory:" and query["db_system"] == "sqlite"
    assert query["duration_ms"] >= 200
    span = request_span(otlp_module, "/query")
    assert query["trace_id"] == span.trace_id

    # Through an async engine the line is found across SQLAlchemy's greenlet.
    via_async = next(q for q in queries if q["route"] == "/query_async")
    assert via_async["statement"] == "SELECT sleep_ms(?) + ? * length(?)"
    assert via_async["location"] == {"file": "logs_app.py", "line": ASYNC_QUERY_LINE, "function": "query_async"}
    assert via_async["trace_id"] == request_span(otlp_module, "/query_async").trace_id

    exported = wait_until(lambda: [r for r in otlp_log_records(otlp_module) if r["event"] == "fastapi_doctor.slow_query"
                                   and r["attributes"]["http.route"] == "/query"])
    assert exported[0]["attributes"]["db.query.text"] == query["statement"]
    assert exported[0]["attributes"]["code.line.number"] == SLOW_QUERY_LINE
    assert exported[0]["trace_id"] == span.trace_id


def test_secrets_in_query_strings_headers_and_bound_parameters_appear_in_no_log(sampled_app, otlp_module):
    wait_until(lambda: json_records(sampled_app.logs(), "fastapi_doctor.queries"))
    wait_until(lambda: any(r["event"] == "fastapi_doctor.slow_query" for r in otlp_log_records(otlp_module)))
    logs = sampled_app.logs()
    assert SECRET not in logs
    log_bytes = b"".join(r.SerializeToString() for r in otlp_module.log_requests)
    assert SECRET.encode() not in log_bytes
    # FastAPI's own record of the unhandled exception is exported redacted like spans: the type and
    # the code locations, not the message.
    [failure] = [r for r in otlp_log_records(otlp_module) if r["event"] == "http.server.request.exception"]
    assert failure["attributes"]["exception.type"] == "RuntimeError"
    assert "exception.message" not in failure["attributes"]
    assert 'logs_app.py", line' in failure["attributes"]["exception.stacktrace"]
    assert b"the endpoint failed" not in log_bytes


# -- defaults and modes ------------------------------------------------------------------------------


def test_fast_requests_are_logged_only_with_all_and_unsampled_ones_have_no_trace_id(serve):
    default = serve("logs_app:app", env={"OTEL_TRACES_SAMPLER_ARG": "0"})
    everything = serve("logs_app:app", env={"OTEL_TRACES_SAMPLER_ARG": "0", "FASTAPI_DOCTOR_LOG_REQUESTS": "all"})
    for app in (default, everything):
        assert httpx.get(app.url + "/fast").json() == {"ok": True}
        assert httpx.get(app.url + "/error").status_code == 500

    def lines(app: AppProcess, route: str) -> list[str]:
        return [ln for ln in app.logs().splitlines() if "fastapi_doctor.requests" in ln and f"route={route} " in ln]

    wait_until(lambda: lines(default, "/error") and lines(everything, "/error"))
    assert lines(default, "/fast") == []
    [fast] = lines(everything, "/fast")
    assert " INFO fastapi_doctor.requests request reasons=all method=GET route=/fast status=200 " in fast
    # Unsampled: no span, so no trace id rather than an invented one.
    assert fast.endswith("root_causes=- trace_id=- span_id=-")


def test_off_writes_no_request_record(serve):
    app = serve("logs_app:app", env={"FASTAPI_DOCTOR_LOG_REQUESTS": "off"})
    assert httpx.get(app.url + "/error").status_code == 500
    assert httpx.get(app.url + "/finding").status_code == 200
    wait_until(lambda: "raised by the test app" in app.logs())  # the finding's own log line
    assert "fastapi_doctor.requests" not in app.logs()


def test_app_records_carry_trace_ids_and_go_over_otlp_when_asked(serve, otlp):
    app = serve(
        "logs_applog:app",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
            "FASTAPI_DOCTOR_SLOW_REQUEST_MS": "100",
            "LOGS_APP_SLOW_S": "0.2",
        },
    )
    assert httpx.get(app.url + "/applog").status_code == 200
    assert httpx.get(app.url + "/slow").status_code == 200
    span = request_span(otlp, "/applog")
    trace_spans = {s.span_id for s in otlp.spans() if s.trace_id == span.trace_id}

    line = wait_until(lambda: [ln for ln in app.logs().splitlines() if ln.endswith("| handling applog")])[0]
    trace_id, span_id = re.search(r"trace_id=(\w+) span_id=(\w+)", line).groups()
    assert trace_id == span.trace_id and span_id in trace_spans
    # Outside a request: None, not an invented id.
    assert "APP INFO logs_applog trace_id=None span_id=None | logging configured" in app.logs()

    # The agent's record goes through the app's handler (its dictConfig had disabled the agent's
    # logger; the agent re-enabled it at start-up) and is written once, not also by the fallback.
    slow = wait_until(lambda: [ln for ln in app.logs().splitlines() if "route=/slow " in ln])
    assert len(slow) == 1 and slow[0].startswith("APP WARNING fastapi_doctor.requests trace_id=")

    exported = wait_until(lambda: [r for r in otlp_log_records(otlp) if r["body"] == "handling applog"])
    assert exported[0]["trace_id"] == span.trace_id and exported[0]["scope"] == "logs_app"
    assert exported[0]["attributes"]["code.function.name"] == "applog"
    # The agent's own records are exported once, by the agent's handler.
    wait_until(lambda: [r for r in otlp_log_records(otlp) if r["attributes"].get("http.route") == "/slow"])
    time.sleep(0.5)
    assert len([r for r in otlp_log_records(otlp) if r["attributes"].get("http.route") == "/slow"]) == 1


# -- a storm -----------------------------------------------------------------------------------------


def storm_accounting(logs: str, requests: int) -> tuple[int, int] | None:
    """(records written, records counted in summaries) for /storm once they add up to ``requests``."""
    lines = [ln for ln in logs.splitlines() if "fastapi_doctor.requests" in ln and "route=/storm " in ln]
    written = [ln for ln in lines if "repeated" not in ln]
    repeated = sum(int(m.replace(",", "")) for ln in lines for m in re.findall(r"repeated ([\d,]+) times", ln))
    return (len(written), repeated) if len(written) + repeated == requests else None


@pytest.mark.slow
def test_a_storm_of_identical_errors_writes_a_bounded_number_of_lines(serve):
    window = 2.0
    app = serve("logs_app:app", env={"FASTAPI_DOCTOR_LOG_REPEAT_SECONDS": str(window)})
    started = time.monotonic()
    responses = concurrent_get(app.url + "/storm", 10_000, concurrency=16)
    elapsed = time.monotonic() - started
    assert len(responses) == 10_000 and {r.status_code for r in responses} == {503}

    def storm_lines() -> list[str]:
        return [ln for ln in app.logs().splitlines() if "fastapi_doctor.requests" in ln and "route=/storm " in ln]

    # Every request is accounted for once the last window is summarised: written or counted.
    written, repeated = wait_until(lambda: storm_accounting(app.logs(), 10_000), timeout=window + 10)
    lines = storm_lines()
    windows = elapsed / window + 2
    assert written <= windows and len(lines) <= 2 * windows, (len(lines), elapsed)
    summary = next(ln for ln in lines if "repeated" in ln)
    assert re.search(r"request reasons=error method=GET route=/storm status=503 root_causes=- … repeated [\d,]+ times "
                     r"in the last 2 s$", summary)
    assert metric_value(app.metrics_text(), "fastapi_doctor_logs_suppressed_total", log_kind="request") == repeated


def test_summaries_are_written_in_a_prefork_worker():
    """Under gunicorn the agent starts in the master; the worker gets its own summary thread."""
    app = AppProcess("logs_app:app", env={"FASTAPI_DOCTOR_LOG_REPEAT_SECONDS": "1"}, command=["-"])
    app.command = [str(BIN / "opentelemetry-instrument"), str(BIN / "gunicorn"), "logs_app:app", "-w", "1",
                   "-k", "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{app.port}"]
    app.start()
    try:
        responses = concurrent_get(app.url + "/storm", 200, concurrency=4)
        assert {r.status_code for r in responses} == {503}
        # The storm is over: only the worker's summary thread can write the last window's count.
        wait_until(lambda: storm_accounting(app.logs(), 200), timeout=10)
    finally:
        app.stop()


# -- in-process: the limiter, the record factory, the undo -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_writes_the_first_record_then_one_summary_per_window():
    from fastapi_doctor.publish.log_limiter import LogLimiter

    clock = Clock()
    limiter = LogLimiter(window_s=60, max_keys=4, clock=clock)
    assert limiter.admit("request", "k", {"route": "/a"}) == (True, None)
    for _ in range(2341):
        assert limiter.admit("request", "k", {"route": "/a"}) == (False, None)
    assert limiter.admit("request", "other", {"route": "/b"})[0] is True
    clock.now += 59.9
    assert limiter.expired() == []
    clock.now += 0.1
    [summary] = limiter.expired()  # "other" had no repeat: no summary, but it is forgotten too
    assert (summary.count, summary.fields, summary.window_s) == (2341, {"route": "/a"}, 60)
    assert len(limiter) == 0

    # A repeat after the window: the next record is written and the ended window comes back with it.
    limiter.admit("request", "k", {})
    limiter.admit("request", "k", {})
    clock.now += 61
    admitted, ended = limiter.admit("request", "k", {})
    assert admitted is True and ended is not None and ended.count == 1


def test_limiter_memory_is_bounded_by_distinct_keys():
    from fastapi_doctor.publish.log_limiter import LogLimiter

    limiter = LogLimiter(window_s=60, max_keys=100, clock=Clock())
    written = sum(limiter.admit("query", f"statement {i}", {})[0] for i in range(10_000))
    assert written == 100 and len(limiter) == 101  # 100 keys and the overflow count
    [overflow] = [s for s in limiter.drain() if s.overflow]
    assert overflow.count == 9_900


def test_summary_text_and_json_say_how_many_were_suppressed():
    from fastapi_doctor.publish.logs import render_text

    fields = {"kind": "request", "reasons": ["error"], "method": "GET", "route": "/r", "status": 500,
              "root_causes": [], "repeated": 2341, "window_s": 60.0}
    assert render_text(fields) == (
        "request reasons=error method=GET route=/r status=500 root_causes=- … repeated 2,341 times in the last 60 s"
    )


@pytest.fixture
def agent_with_logs(tmp_path: Path) -> Iterator[Any]:
    """A real Agent object with a private meter (no global providers, no side server), logs signal on."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from fastapi_doctor import _agent, config
    from fastapi_doctor.lean_metrics import LeanMetrics
    from fastapi_doctor.middleware import RequestMetrics
    from fastapi_doctor.publish.logs import LogsSignal

    settings, errors = config.load(environ={}, overrides={"slow_query_ms": 100, "log_format": "json"})
    assert errors == []
    agent = _agent.Agent(settings)
    agent.meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("test")
    agent.request_metrics = RequestMetrics(LeanMetrics("test", "0"))
    agent.running = True
    signal = LogsSignal()
    signal.instrument(agent)
    try:
        yield agent, signal
    finally:
        signal.uninstrument()
        agent.instrumentation.undo()
        agent.running = False


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _slow_sqlite_engine() -> Any:
    from sqlalchemy import create_engine, event

    engine = create_engine("sqlite://")

    @event.listens_for(engine, "connect")
    def functions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("sleep_ms", 1, lambda ms: time.sleep(ms / 1000) or ms)

    return engine


def test_uninstrument_removes_listeners_handlers_hooks_and_the_record_patch(agent_with_logs):
    from sqlalchemy import event, text
    from sqlalchemy.engine import Engine

    from fastapi_doctor.publish.logs import QUERIES_LOGGER, REQUESTS_LOGGER

    agent, signal = agent_with_logs
    original_make_record = signal.trace_ids._original
    engine = _slow_sqlite_engine()
    capture = Capture()
    logging.getLogger(QUERIES_LOGGER).addHandler(capture)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT sleep_ms(150) WHERE :p = :p"), {"p": SECRET})
        [record] = capture.records
        assert record.fastapi_doctor["statement"] == "SELECT sleep_ms(?) WHERE ? = ?"
        assert record.fastapi_doctor["location"]["function"].endswith("test_uninstrument_removes_listeners_handlers_hooks_and_the_record_patch")
        assert SECRET not in record.getMessage()

        assert event.contains(Engine, "before_cursor_execute", signal.query_log.before)
        assert signal.request_log.finished in agent.request_metrics.finished_hooks
        assert logging.Logger.makeRecord is not original_make_record
        assert any(getattr(h, "fastapi_doctor", False) for h in logging.getLogger(REQUESTS_LOGGER).handlers)

        query_log, request_log = signal.query_log, signal.request_log
        signal.uninstrument()
        agent.instrumentation.undo()

        assert not event.contains(Engine, "before_cursor_execute", query_log.before)
        assert not event.contains(Engine, "after_cursor_execute", query_log.after)
        assert request_log.finished not in agent.request_metrics.finished_hooks
        assert logging.Logger.makeRecord is original_make_record
        for name in (REQUESTS_LOGGER, QUERIES_LOGGER):
            assert not any(getattr(h, "fastapi_doctor", False) for h in logging.getLogger(name).handlers)
            assert logging.getLogger(name).level == logging.NOTSET
        with engine.connect() as conn:
            conn.execute(text("SELECT sleep_ms(150)"))
        assert len(capture.records) == 1  # nothing after the undo
        assert not hasattr(logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "m", None, None), "trace_id")
    finally:
        logging.getLogger(QUERIES_LOGGER).removeHandler(capture)


def test_records_carry_the_current_span_and_an_apps_own_trace_id_extra_wins(agent_with_logs):
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    logger = logging.getLogger("app.under.test")
    capture = Capture()
    logger.addHandler(capture)
    try:
        logger.warning("outside")
        with tracer.start_as_current_span("work") as span:
            logger.warning("inside")
            logger.warning("own ids", extra={"trace_id": "from-the-app"})  # must not raise KeyError
        ctx = span.get_span_context()
        outside, inside, own = capture.records
        assert (outside.trace_id, outside.span_id) == (None, None)
        assert (inside.trace_id, inside.span_id) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
        assert own.trace_id == "from-the-app"
    finally:
        logger.removeHandler(capture)
