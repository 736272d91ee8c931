"""Synthetic Prometheus series of a healthy service and of each pathology, and the promtool unit tests
built from them.

Each scenario is the healthy baseline with the pathology's series added or replaced. Its test checks
both sides of every expected alert's ``for:`` (silent one evaluation before, firing at the moment it is
due, with exact labels and annotations) and that every other alert stays silent. The figures an alert
must print (``$value``) are written here by hand from the series, so promtool checks the arithmetic of
each expression and the formatting of each description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dashboards import alerts as alert_rules
from dashboards.config import ROOT_CAUSES, Config

JOB, INSTANCE = "patient", "10.0.0.7:9464"
BASE = {"job": JOB, "instance": INSTANCE}
# Bucket boundaries of the synthetic histograms (seconds); the expected quantiles below depend on them.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BYTES_BUCKETS = (1024, 16384, 65536, 262144, 1048576, 4194304)
COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200)
SAMPLES = 30  # one a minute
WORKERS = {"fastapi_doctor_asyncio_coroutine": "worker", "code_file_path": "app/main.py", "code_line_number": "31"}
NOTIFIER = {"fastapi_doctor_asyncio_coroutine": "wait_for_delivery", "code_file_path": "app/orders.py",
            "code_line_number": "58"}
INTERVAL_S = 60


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _num(x: float) -> str:
    return f"{x:g}"


def counter(name: str, per_minute: float, **labels: str) -> dict[str, str]:
    return {"series": name + _labels({**BASE, **labels}), "values": f"0+{_num(per_minute)}x{SAMPLES}"}


def gauge(name: str, value: float, **labels: str) -> dict[str, str]:
    return {"series": name + _labels({**BASE, **labels}), "values": f"{_num(value)}+0x{SAMPLES}"}


def histogram(name: str, observations: dict[float, float], buckets: tuple[float, ...], **labels: str) -> list[dict[str, str]]:
    """Bucket, sum and count series of ``observations`` ({value: count per minute}) every minute."""
    out = []
    for le in (*buckets, float("inf")):
        per_minute = sum(n for v, n in observations.items() if v <= le)
        le_text = "+Inf" if le == float("inf") else _num(le)
        out.append(counter(f"{name}_bucket", per_minute, **labels, le=le_text))
    out.append(counter(f"{name}_sum", sum(v * n for v, n in observations.items()), **labels))
    out.append(counter(f"{name}_count", sum(observations.values()), **labels))
    return out


def healthy() -> list[dict[str, str]]:
    """A service doing fine, with figures close to but under every threshold."""
    s: list[dict[str, str]] = []
    s += histogram("http_server_request_duration_seconds", {0.012: 600}, SECONDS_BUCKETS,
                   http_request_method="GET", http_route="/healthy", http_response_status_code="200", url_scheme="http")
    # Heartbeat every 50 ms; a rare slow tick.
    s += histogram("fastapi_doctor_eventloop_lag_seconds", {0.0008: 1195, 0.03: 5}, SECONDS_BUCKETS)
    # 1% of the time blocked: under the 10% threshold.
    s.append(counter("fastapi_doctor_eventloop_blocked_time_seconds_total", 0.6, http_route="/healthy", root_cause="blocking_io"))
    s.append(counter("fastapi_doctor_eventloop_blocked_total", 2, http_route="/healthy", root_cause="blocking_io"))
    s += [gauge("fastapi_doctor_threadpool_busy", 3), gauge("fastapi_doctor_threadpool_limit", 40),
          gauge("fastapi_doctor_threadpool_waiting", 0)]
    s += histogram("fastapi_doctor_dependency_duration_seconds", {0.0004: 600}, SECONDS_BUCKETS,
                   fastapi_doctor_dependency="get_settings", http_route="/healthy")
    # A dependency that awaits a real query: 12 ms, under the 25 ms threshold.
    s += histogram("fastapi_doctor_dependency_duration_seconds", {0.012: 120}, SECONDS_BUCKETS,
                   fastapi_doctor_dependency="current_user", http_route="/orders")
    s += histogram("fastapi_doctor_middleware_duration_seconds", {0.0002: 720}, SECONDS_BUCKETS,
                   fastapi_doctor_middleware="CORSMiddleware")
    s += histogram("http_server_response_body_size_bytes", {120: 600}, BYTES_BUCKETS, http_route="/healthy")
    # A large export that is compressed: not a large_payload.
    s += histogram("http_server_response_body_size_bytes", {600000: 10}, BYTES_BUCKETS,
                   http_route="/export", http_response_header_content_encoding="gzip")
    s += [gauge("db_client_connection_count", 2, db_client_connection_pool_name="main", db_client_connection_state="used"),
          gauge("db_client_connection_count", 3, db_client_connection_pool_name="main", db_client_connection_state="idle"),
          gauge("db_client_connection_max", 15, db_client_connection_pool_name="main"),
          gauge("db_client_connection_idle_max", 5, db_client_connection_pool_name="main"),
          gauge("fastapi_doctor_db_pool_overflow", 0, db_client_connection_pool_name="main"),
          gauge("db_client_connection_pending_requests", 0, db_client_connection_pool_name="main"),
          counter("db_client_connection_timeouts_total", 0, db_client_connection_pool_name="main")]
    s += histogram("db_client_connection_use_time_seconds", {0.004: 720}, SECONDS_BUCKETS, db_client_connection_pool_name="main")
    s += histogram("db_client_connection_wait_time_seconds", {0.0001: 720}, SECONDS_BUCKETS, db_client_connection_pool_name="main")
    s += histogram("fastapi_doctor_db_statements", {2: 600}, COUNT_BUCKETS, http_route="/healthy")
    # Nine statements a request: one under the N+1 threshold.
    s += histogram("fastapi_doctor_db_statements", {9: 120}, COUNT_BUCKETS, http_route="/orders")
    # Three workers started in the lifespan: old, but as many as ever.
    s += [gauge("fastapi_doctor_asyncio_tasks_alive", 3, **WORKERS),
          {"series": "fastapi_doctor_asyncio_tasks_oldest_age_seconds" + _labels({**BASE, **WORKERS}),
           "values": f"3600+{INTERVAL_S}x{SAMPLES}"}]
    return s


@dataclass(frozen=True)
class Expect:
    alert: str
    labels: dict[str, str]
    value: str  # how ``{{ $value | … }}`` renders when the alert becomes due
    # First evaluation (seconds) at which the expression holds. A ratio of rates holds from the second
    # sample (60 s); a plain rate must first grow past its threshold while the window fills.
    onset: int = 60


@dataclass(frozen=True)
class Scenario:
    name: str
    series: list[dict[str, str]]
    expect: list[Expect] = field(default_factory=list)


def _replace(base: list[dict[str, str]], extra: list[dict[str, str]], drop: str | None = None) -> list[dict[str, str]]:
    """``base`` without the series whose name starts with ``drop``, plus ``extra``."""
    kept = [s for s in base if drop is None or not s["series"].startswith(drop)]
    return kept + extra


# The line of code of each scenario's finding, on its info series (slow_middleware's has none: an
# evicted finding, or an agent without the series; its alert falls back to the counter alone).
FINDING_LOCATIONS = {
    "blocking_io": ("app/report.py", "42", "build_report"),
    "dependency_rebuild": ("app/deps.py", "17", "get_engine"),
    "pool_leak": ("app/db.py", "88", "leaky"),
    "large_payload": ("app/catalog.py", "23", "catalog"),
    "n_plus_one": ("app/authors.py", "61", "list_authors"),
    "task_leak": ("app/orders.py", "58", "notify"),
}


def finding_labels(root_cause: str, route: str | None) -> dict[str, str]:
    """The labels a finding's alert carries: where it fired, its route, finding_id and line of code."""
    labels = {**BASE, **({"http_route": route} if route is not None else {}), "finding_id": f"{root_cause}-1"}
    if root_cause in FINDING_LOCATIONS:
        file, line, function = FINDING_LOCATIONS[root_cause]
        labels.update(code_file_path=file, code_line_number=line, code_function_name=function)
    return labels


def _finding(root_cause: str, route: str | None) -> list[dict[str, str]]:
    """A finding reported once a minute: its counter, and its info series when it has a location."""
    labels = {k: v for k, v in finding_labels(root_cause, route).items() if k not in BASE}
    series = [counter("fastapi_doctor_findings_total", 1, root_cause=root_cause,
                      **{k: v for k, v in labels.items() if not k.startswith("code_")})]
    if "code_file_path" in labels:
        series.append(gauge("fastapi_doctor_finding_info", 1, root_cause=root_cause, http_request_method="GET",
                            **labels))
    return series


def _findings_only(h: list[dict[str, str]], root_cause: str) -> Scenario:
    """A root cause without alerts on its signals (no builder in alerts.py): one finding a minute."""
    route = f"/{root_cause}"
    return Scenario(root_cause, h + _finding(root_cause, route),
                    [Expect(alert_rules.findings_alert_name(root_cause), finding_labels(root_cause, route), "2")])


def scenarios() -> list[Scenario]:
    h = healthy()
    written = _scenarios(h)
    named = {s.name for s in written}
    return written + [_findings_only(h, rc) for rc in ROOT_CAUSES if rc not in named]


def _scenarios(h: list[dict[str, str]]) -> list[Scenario]:
    route = lambda r: {**BASE, "http_route": r}  # noqa: E731
    pool = {**BASE, "db_client_connection_pool_name": "main"}
    return [
        Scenario("healthy", h),
        Scenario(
            "blocking_io",
            _blocking(h),
            # 18 s blocked a minute: the 5m rate is 18*k/300 at minute k < 5, past 10% from minute 2.
            [Expect("FastAPIDoctorEventLoopBlocked", route("/report"), "30%", onset=120),
             # p99 falls in the (0.25, 0.5] bucket: 0.25 + 0.25 * (0.99*1200 - 900) / 300 = 0.49.
             Expect("FastAPIDoctorEventLoopLagHigh", dict(BASE), "490ms"),
             Expect("FastAPIDoctorThreadpoolSaturated", dict(BASE), "12", onset=0),
             # One finding a minute: due one minute after the second sample, with two in the window.
             Expect("FastAPIDoctorBlockingIOFinding", finding_labels("blocking_io", "/report"), "2")],
        ),
        Scenario(
            "dependency_rebuild",
            h + histogram("fastapi_doctor_dependency_duration_seconds", {0.08: 300}, SECONDS_BUCKETS,
                          fastapi_doctor_dependency="get_engine", http_route="/orders")
            + _finding("dependency_rebuild", "/orders"),
            [Expect("FastAPIDoctorDependencyRebuildFinding", finding_labels("dependency_rebuild", "/orders"), "2")],
        ),
        Scenario(
            "pool_leak",
            _pool_leak(h),
            [Expect("FastAPIDoctorPoolSaturated", pool, "100%", onset=0),
             Expect("FastAPIDoctorPoolTimeouts", pool, "0.05"),
             Expect("FastAPIDoctorConnectionsHeldTooLong", pool, "45s"),
             Expect("FastAPIDoctorPoolLeakFinding", finding_labels("pool_leak", "/leaky"), "2")],
        ),
        Scenario(
            "slow_middleware",
            _replace(h, histogram("fastapi_doctor_middleware_duration_seconds", {0.06: 720}, SECONDS_BUCKETS,
                                  fastapi_doctor_middleware="AuditLogMiddleware") + _finding("slow_middleware", None)),
            [Expect("FastAPIDoctorSlowMiddleware", {**BASE, "fastapi_doctor_middleware": "AuditLogMiddleware"}, "75ms"),
             Expect("FastAPIDoctorSlowMiddlewareFinding", finding_labels("slow_middleware", None), "2")],
        ),
        Scenario(
            "large_payload",
            _large_payload(h),
            [Expect("FastAPIDoctorLargeUncompressedResponses", route("/catalog"), "1Mi"),
             Expect("FastAPIDoctorLargePayloadFinding", finding_labels("large_payload", "/catalog"), "2")],
        ),
        Scenario(
            "n_plus_one",
            _replace(h, histogram("fastapi_doctor_db_statements", {51: 300}, COUNT_BUCKETS, http_route="/authors")
                     + _finding("n_plus_one", "/authors")),
            [Expect("FastAPIDoctorNPlusOneQueries", route("/authors"), "51"),
             Expect("FastAPIDoctorNPlusOneFinding", finding_labels("n_plus_one", "/authors"), "2")],
        ),
        Scenario(
            "task_leak",
            h + _task_leak(),
            # 20 more pending tasks a minute: 100 more than five minutes before.
            [Expect("FastAPIDoctorTasksPilingUp", {**BASE, **NOTIFIER}, "100"),
             Expect("FastAPIDoctorTaskLeakFinding", finding_labels("task_leak", "/orders/{order_id}/notify"), "2")],
        ),
    ]


def _task_leak() -> list[dict[str, str]]:
    """A fire-and-forget task per request that never ends: alive and the oldest's age only grow."""
    labels = _labels({**BASE, **NOTIFIER})
    return [
        {"series": "fastapi_doctor_asyncio_tasks_alive" + labels, "values": f"0+20x{SAMPLES}"},
        {"series": "fastapi_doctor_asyncio_tasks_oldest_age_seconds" + labels, "values": f"0+{INTERVAL_S}x{SAMPLES}"},
        counter("fastapi_doctor_asyncio_tasks_leaked_total", 20, **NOTIFIER),
        *_finding("task_leak", "/orders/{order_id}/notify"),
    ]


def _blocking(h: list[dict[str, str]]) -> list[dict[str, str]]:
    s = _replace(h, histogram("fastapi_doctor_eventloop_lag_seconds", {0.0008: 900, 0.3: 300}, SECONDS_BUCKETS),
                 drop="fastapi_doctor_eventloop_lag_seconds")
    s = _replace(s, [gauge("fastapi_doctor_threadpool_busy", 40)], drop="fastapi_doctor_threadpool_busy")
    s = _replace(s, [gauge("fastapi_doctor_threadpool_waiting", 12)], drop="fastapi_doctor_threadpool_waiting")
    return s + [
        counter("fastapi_doctor_eventloop_blocked_time_seconds_total", 18, http_route="/report", root_cause="blocking_io"),
        counter("fastapi_doctor_eventloop_blocked_total", 60, http_route="/report", root_cause="blocking_io"),
        *_finding("blocking_io", "/report"),
    ]


def _large_payload(h: list[dict[str, str]]) -> list[dict[str, str]]:
    """Serialising 1 MiB bodies on the event loop also makes it lag (episodes no blocking call explains),
    and requests awaiting a dependency meanwhile see it slow: neither is blocking_io nor dependency_rebuild."""
    s = _replace(h, histogram("fastapi_doctor_eventloop_lag_seconds", {0.0008: 1100, 0.15: 100}, SECONDS_BUCKETS),
                 drop="fastapi_doctor_eventloop_lag_seconds")
    return s + [
        *histogram("http_server_response_body_size_bytes", {1048576: 60}, BYTES_BUCKETS,
                   http_route="/catalog", http_response_header_content_encoding="identity"),
        *histogram("fastapi_doctor_response_serialize_duration_seconds", {0.15: 60}, SECONDS_BUCKETS, http_route="/catalog"),
        counter("fastapi_doctor_eventloop_blocked_time_seconds_total", 9, http_route="/catalog"),
        counter("fastapi_doctor_eventloop_blocked_total", 60, http_route="/catalog"),
        *histogram("fastapi_doctor_dependency_duration_seconds", {0.06: 60}, SECONDS_BUCKETS,
                   fastapi_doctor_dependency="get_session", http_route="/catalog"),
        *_finding("large_payload", "/catalog"),
    ]


def _pool_leak(h: list[dict[str, str]]) -> list[dict[str, str]]:
    pool = {"db_client_connection_pool_name": "main"}
    s = [x for x in h if not x["series"].startswith(("db_client_connection_count", "db_client_connection_pending",
                                                      "db_client_connection_timeouts", "fastapi_doctor_db_pool_overflow",
                                                      "db_client_connection_use_time", "db_client_connection_wait_time"))]
    return s + [
        gauge("db_client_connection_count", 15, **pool, db_client_connection_state="used"),
        gauge("db_client_connection_count", 0, **pool, db_client_connection_state="idle"),
        gauge("fastapi_doctor_db_pool_overflow", 10, **pool),
        gauge("db_client_connection_pending_requests", 6, **pool),
        counter("db_client_connection_timeouts_total", 3, **pool),
        # Connections come back only when the garbage collector finds them: 45 s after checkout.
        *histogram("db_client_connection_use_time_seconds", {45: 4}, SECONDS_BUCKETS, **pool),
        *histogram("db_client_connection_wait_time_seconds", {30: 3, 5: 20}, SECONDS_BUCKETS, **pool),
        *_finding("pool_leak", "/leaky"),
    ]


_TEMPLATE = re.compile(r'\{\{\s*(\$labels\.(\w+)|\$value(\s*\|\s*\w+)?|printf "[^"]*" \$value)\s*\}\}')


_IF_LABEL = re.compile(r"\{\{\s*if \$labels\.(\w+)\s*\}\}(.*?)\{\{\s*end\s*\}\}", re.S)


def render(template: str, labels: dict[str, str], value: str) -> str:
    """The annotation promtool must produce: ``$labels.x`` from the labels, ``$value`` as written by hand,
    ``{{ if $labels.x }}…{{ end }}`` kept only when the label is there."""
    template = _IF_LABEL.sub(lambda m: m.group(2) if labels.get(m.group(1)) else "", template)
    return _TEMPLATE.sub(lambda m: labels.get(m.group(2), "") if m.group(2) else value, template)


def _duration(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(text[:-1]) * units[text[-1]]


def promtool_tests(cfg: Config) -> dict[str, dict[str, Any]]:
    """One promtool test file per scenario (name -> content)."""
    rules = {r["alert"]: r for g in alert_rules.rule_groups(cfg)["groups"] for r in g["rules"]}
    files = {}
    for scenario in scenarios():
        tests: list[dict[str, Any]] = []
        expected = {e.alert: e for e in scenario.expect}
        late = 0
        for e in scenario.expect:
            rule = rules[e.alert]
            due = e.onset + _seconds(rule["for"])
            late = max(late, due)
            labels = {**e.labels, "root_cause": rule["labels"]["root_cause"], "severity": rule["labels"]["severity"]}
            annotations = {k: render(v, labels, e.value) for k, v in rule["annotations"].items()}
            tests.append({"eval_time": _duration(due - INTERVAL_S), "alertname": e.alert, "exp_alerts": []})
            tests.append({"eval_time": _duration(due), "alertname": e.alert,
                          "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}]})
        # Long after every expected alert is due, every other alert is still silent.
        late = max(late, max(_seconds(r["for"]) for r in rules.values()) + INTERVAL_S) + 5 * INTERVAL_S
        for name in rules:
            if name not in expected:
                tests.append({"eval_time": _duration(late), "alertname": name, "exp_alerts": []})
        files[scenario.name] = {
            "rule_files": ["../alerts.yaml"],
            "evaluation_interval": "1m",
            "tests": [{"name": scenario.name, "interval": "1m", "input_series": scenario.series, "alert_rule_test": tests}],
        }
    return files
