"""Findings as telemetry (issue 22): each finding leaves the process as a bounded Prometheus series that
carries its identity and code location, beside its occurrence counter, and as one OpenTelemetry log
event over OTLP, with the same ``finding_id`` in every process that runs the same code.

Real uvicorn processes of tests/apps/fleet_app.py (routers, auth dependency, sync SQLAlchemy on SQLite)
under the wrapper, the side server's /metrics, and the harness's real OTLP/gRPC receiver.
"""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
from apps.fullstack_security import create_access_token
from harness import APPS, AppProcess, OTLPReceiver, metric_value, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_logs import otlp_log_records

HEADERS = {"authorization": f"Bearer {create_access_token(1)}", "origin": "https://library.example.com"}
INFO = "fastapi_doctor_finding_info"
COUNTER = "fastapi_doctor_findings_total"


def mark_line(mark: str) -> int:
    lines = (APPS / "fleet_app.py").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.endswith(f"# mark: {mark}"))


def get(app: AppProcess, path: str) -> None:
    response = httpx.get(app.url + path, headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text[:300]


def samples(text: str, name: str) -> list[dict[str, str]]:
    """Labels of every sample of ``name`` on a Prometheus page (values are 1 for an info series)."""
    return [dict(s.labels, value=s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def finding_events(otlp: OTLPReceiver) -> list[dict[str, Any]]:
    return [r for r in otlp_log_records(otlp) if r["event"] == "fastapi_doctor.finding"]


def start(serve: Any, otlp: OTLPReceiver | None = None, **env: str) -> AppProcess:
    settings = {"OTEL_TRACES_SAMPLER_ARG": "0", "OTEL_BLRP_SCHEDULE_DELAY": "100", **env}
    if otlp is not None:
        settings["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.endpoint
    return serve("fleet_app:app", env=settings, ready_path="/health")


def test_a_finding_is_an_info_series_with_its_location_beside_its_counter_and_one_log_event(serve, otlp):
    app = start(serve, otlp)
    for _ in range(3):
        get(app, "/api/authors/")
    [finding] = wait_until(lambda: app.findings("n_plus_one"))
    assert finding["count"] >= 3

    text = app.metrics_text()
    [info] = [s for s in samples(text, INFO) if s["root_cause"] == "n_plus_one"]
    assert info == {
        "root_cause": "n_plus_one",
        "finding_id": finding["id"],
        "http_request_method": "GET",
        "http_route": "/api/authors/",
        "code_file_path": "fleet_app.py",
        "code_line_number": str(mark_line("n+1 authors")),
        "code_function_name": "list_authors",
        "otel_scope_name": "fastapi_doctor",
        "otel_scope_schema_url": "",
        "otel_scope_version": info["otel_scope_version"],
        "value": 1.0,
    }
    assert metric_value(text, COUNTER, finding_id=finding["id"], root_cause="n_plus_one",
                        http_route="/api/authors/") == finding["count"]
    last_seen = metric_value(text, "fastapi_doctor_finding_last_seen_seconds", finding_id=finding["id"])
    assert last_seen is not None and last_seen > 1.7e9

    # One log event for the new finding, not one per occurrence (the quiet period is 60 s by default).
    [event] = wait_until(lambda: finding_events(otlp))
    get(app, "/api/authors/")
    wait_until(lambda: metric_value(app.metrics_text(), COUNTER, finding_id=finding["id"]) == finding["count"] + 1)
    attrs = event["attributes"]
    assert {k: attrs[k] for k in attrs if not k.startswith("fastapi_doctor.")} == {
        "root_cause": "n_plus_one",
        "finding_id": finding["id"],
        "http.request.method": "GET",
        "http.route": "/api/authors/",
        "code.file.path": "fleet_app.py",
        "code.line.number": mark_line("n+1 authors"),
        "code.function.name": "list_authors",
    }
    assert event["body"] == app.findings("n_plus_one")[0]["summary"]
    assert attrs["fastapi_doctor.evidence.executions"] == finding["evidence"]["executions"]
    assert event["severity"] == "WARN"
    app.stop()  # flushes the log queue: still one event
    assert len(finding_events(otlp)) == 1


def test_a_finding_recurring_after_a_quiet_period_gets_a_new_log_event(serve, otlp):
    app = start(serve, otlp, FASTAPI_DOCTOR_LOG_REPEAT_SECONDS="1")
    get(app, "/api/authors/")
    wait_until(lambda: finding_events(otlp))

    def recurred() -> list[dict[str, Any]]:
        get(app, "/api/authors/")  # polled 1.5 s apart: each occurrence follows a quiet second
        events = finding_events(otlp)
        return events if len(events) >= 2 else []

    first, second = wait_until(recurred, timeout=15, interval=1.5)[:2]
    assert first["attributes"]["finding_id"] == second["attributes"]["finding_id"]
    assert second["attributes"]["fastapi_doctor.finding.count"] > first["attributes"]["fastapi_doctor.finding.count"]


def test_the_same_code_has_the_same_finding_id_in_another_process(serve):
    ids = []
    for _ in range(2):
        app = start(serve)
        get(app, "/api/shelves/")
        [finding] = wait_until(lambda: app.findings("n_plus_one"))
        [info] = [s for s in samples(app.metrics_text(), INFO) if s["finding_id"] == finding["id"]]
        assert info["code_line_number"] == str(mark_line("n+1 shelves"))
        ids.append(finding["id"])
        app.stop()
    assert ids[0] == ids[1]


def test_info_series_are_bounded_by_max_findings(serve):
    app = start(serve, FASTAPI_DOCTOR_MAX_FINDINGS="2")
    for path in ("/api/authors/", "/api/shelves/", "/api/genres/"):
        get(app, path)
    wait_until(lambda: app.doctor()["evicted"] >= 1)
    held = {f["id"] for f in app.findings()}
    text = app.metrics_text()
    assert len(held) == 2
    assert {s["finding_id"] for s in samples(text, INFO)} == held
    assert {s["finding_id"] for s in samples(text, "fastapi_doctor_finding_last_seen_seconds")} == held


def test_the_findings_series_pass_promtool(serve):
    app = start(serve)
    get(app, "/api/authors/")
    wait_until(lambda: app.findings("n_plus_one"))
    text = app.metrics_text()
    assert INFO in text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert [line for line in (result.stdout + result.stderr).splitlines() if "finding" in line] == []
