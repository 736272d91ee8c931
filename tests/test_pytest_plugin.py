"""pytest --doctor on the patient's own test suite (agent/fastapi_doctor_demo/tests), in a real pytest
subprocess: each sick route's test fails naming its root cause and line, each healthy twin passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "agent" / "fastapi_doctor_demo" / "tests" / "test_patient.py"

# test -> (root cause, file:function of the line it must name)
SICK = {
    "test_quote_blocking_client": ("blocking_io", "demo/pricing.py", "fetch_quote_blocking"),
    "test_live_server_quote_blocking_client": ("blocking_io", "demo/pricing.py", "fetch_quote_blocking"),
    "test_recent_orders_new_engine": ("dependency_rebuild", "demo/db.py", "get_session_new_engine"),
    "test_customer_orders_n_plus_one": ("n_plus_one", "demo/orders.py", "orders_with_lines_n_plus_one"),
    "test_async_client_customer_orders_n_plus_one": ("n_plus_one", "demo/orders.py", "orders_with_lines_n_plus_one"),
    "test_products_export_uncompressed": ("large_payload", "demo/scenarios/large_payload.py", "export"),
    "test_cart_session_left_open": ("pool_leak", "demo/carts.py", "_cart_of"),
    "test_product_page_task_per_view": ("task_leak", "demo/analytics.py", "Analytics.track_view"),
}
HEALTHY = {
    "test_quote_v2_async_client",
    "test_live_server_quote_v2",
    "test_recent_orders_v2_shared_engine",
    "test_customer_orders_v2_selectinload",
    "test_async_client_customer_orders_v2",
    "test_products_v2_paginated",
    "test_cart_v2_scoped_session",
    "test_product_page_v2_view_queue",
}


SHOP = ROOT / "tests" / "apps" / "pytest_shop"


def run_suite(
    tmp_path: Path, *args: str, suite: Path = SUITE, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, ET.Element]]:
    junit = tmp_path / "junit.xml"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FASTAPI_DOCTOR_", "OTEL_", "PATIENT_", "SHOP_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider", f"--junitxml={junit}", "-o",
         "addopts=", "--rootdir", str(cwd if cwd != ROOT else tmp_path), *args],
        cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=240,
    )
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    return proc, cases


def failed(case: ET.Element) -> bool:
    return case.find("failure") is not None or case.find("error") is not None


def findings_of(case: ET.Element) -> list[dict]:
    return [json.loads(p.get("value")) for p in case.iter("property") if p.get("name") == "fastapi_doctor.finding"]


def test_without_the_flag_the_plugin_does_nothing(tmp_path: Path) -> None:
    proc, cases = run_suite(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert set(cases) == set(SICK) | HEALTHY
    assert all(not findings_of(c) for c in cases.values())


@pytest.mark.parametrize("workers", [None, "2"], ids=["one-process", "xdist-2"])
def test_sick_route_tests_fail_with_root_cause_and_line_healthy_twins_pass(tmp_path: Path, workers: str | None) -> None:
    report = tmp_path / "doctor.json"
    args = ["--doctor", f"--doctor-json={report}"] + (["-n", workers] if workers else [])
    proc, cases = run_suite(tmp_path, *args)
    out = proc.stdout
    for name, (root_cause, file, function) in SICK.items():
        case = cases[name]
        assert failed(case), f"{name} passed under --doctor:\n{out[-4000:]}"
        text = case.find("failure").text or case.find("failure").get("message", "")
        assert f"fastapi-doctor: {root_cause}" in text, text
        assert file in text and f"in {function}" in text, text
        assert "runbook: docs/runbooks/" in text and "fix: " in text, text
        assert any(f["root_cause"] == root_cause and f["status"] == "failed" for f in findings_of(case)), (
            name, findings_of(case), ET.tostring(case, encoding="unicode")[:3000])
    for name in HEALTHY:
        assert not failed(cases[name]), f"{name} failed under --doctor:\n{out[-6000:]}"
        assert not [f for f in findings_of(cases[name]) if f["status"] == "failed"], findings_of(cases[name])
    assert "fastapi-doctor:" in out and "finding(s)" in out  # the session summary
    document = json.loads(report.read_text())
    by_cause = {f["root_cause"]: f for f in document["findings"]}
    assert {"blocking_io", "dependency_rebuild", "n_plus_one", "large_payload", "pool_leak"} <= set(by_cause)
    n_plus_one = [f for f in document["findings"] if f["root_cause"] == "n_plus_one"][0]
    assert any(t.endswith("::test_customer_orders_n_plus_one") for t in n_plus_one["tests"])


def test_report_mode_lists_without_failing(tmp_path: Path) -> None:
    report = tmp_path / "doctor.json"
    proc, cases = run_suite(tmp_path, "--doctor=report", f"--doctor-json={report}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert findings_of(cases["test_customer_orders_n_plus_one"])
    assert json.loads(report.read_text())["findings"]


def test_a_baseline_lets_known_findings_pass_and_a_marker_allows_a_root_cause(tmp_path: Path) -> None:
    baseline = tmp_path / "doctor-baseline.json"
    proc, _ = run_suite(tmp_path, "--doctor", f"--doctor-baseline={baseline}", "--doctor-update-baseline")
    assert proc.returncode == 0, proc.stdout[-4000:]
    entries = json.loads(baseline.read_text())["findings"]
    assert {"root_cause": "n_plus_one", "route": "/customers/{customer_id}/orders", "file":
            "agent/fastapi_doctor_demo/orders.py", "function": "orders_with_lines_n_plus_one"} in entries
    proc, cases = run_suite(tmp_path, "--doctor", f"--doctor-baseline={baseline}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert {f["status"] for f in findings_of(cases["test_customer_orders_n_plus_one"])} == {"baseline"}


# The shop (tests/apps/pytest_shop): routers, CORS, token auth, password hashing, sync SQLAlchemy sessions.
SHOP_SICK = {
    "test_login_hashes_on_the_loop": ("blocking_io", "hash_password"),  # CPU-bound: the loop watchdog
    "test_my_orders_n_plus_one_sync_session": ("n_plus_one", "my_orders"),
    "test_summary_parks_a_sync_session": ("pool_leak", "summary"),
    "test_pause_behaves_as_without_the_plugin": ("blocking_io", "pause"),  # time.sleep, intercepted
}
SHOP_HEALTHY = {
    "test_login_v2_hashes_in_a_thread",
    "test_my_orders_v2_selectinload",
    "test_summary_v2_closes_its_session",
    "test_my_orders_n_plus_one_allowed_here",  # @pytest.mark.doctor(allow=["n_plus_one"])
    # Before the others: the loop's clock frozen and let go (the blocks after it are still seen).
    "test_summary_on_a_frozen_date",
}


def assert_sick_fail_healthy_pass(
    proc: subprocess.CompletedProcess[str], cases: dict[str, ET.Element], sick: dict[str, tuple[str, str]],
    healthy: set[str],
) -> None:
    """Each sick test failed naming its root cause and the app's function; each healthy twin passed."""
    for name, (root_cause, function) in sick.items():
        assert failed(cases[name]), f"{name} passed under --doctor:\n{proc.stdout[-4000:]}"
        text = cases[name].find("failure").text or ""
        assert f"fastapi-doctor: {root_cause}" in text and "app.py:" in text and f"in {function}" in text, text
    for name in healthy:
        assert not failed(cases[name]), f"{name} failed under --doctor:\n{proc.stdout[-6000:]}"


def test_shop_suite_sync_sessions_cpu_bound_hashing_and_an_allow_marker(tmp_path: Path) -> None:
    env = {"SHOP_DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}"}
    proc, cases = run_suite(tmp_path, "--doctor", suite=SHOP / "test_shop.py", cwd=SHOP, env=env)
    assert_sick_fail_healthy_pass(proc, cases, SHOP_SICK, SHOP_HEALTHY)
    allowed = findings_of(cases["test_my_orders_n_plus_one_allowed_here"])
    assert [f["status"] for f in allowed if f["root_cause"] == "n_plus_one"] == ["allowed"]


def test_the_plugin_does_not_change_what_the_app_does(tmp_path: Path) -> None:
    """blockbuster alone raises BlockingError in /misc/pause, whose except answers "fallback": under
    --doctor=report every test passes, so each route answered exactly as without the plugin."""
    env = {"SHOP_DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}"}
    proc, cases = run_suite(tmp_path, "--doctor=report", suite=SHOP / "test_shop.py", cwd=SHOP, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    pause = findings_of(cases["test_pause_behaves_as_without_the_plugin"])
    assert [(f["root_cause"], f["evidence"]["call"], f["basis"]) for f in pause] == [("blocking_io", "time.sleep", "fact")]


def test_patient_suite_on_postgresql(tmp_path: Path, postgres, pg_database: str) -> None:
    env = {"PATIENT_DATABASE_URL": postgres.url(pg_database)}
    proc, cases = run_suite(tmp_path, "--doctor", "-k", "not live_server", env=env)
    for name, (root_cause, _, function) in SICK.items():
        if "live_server" in name:
            continue
        assert failed(cases[name]), f"{name} passed under --doctor:\n{proc.stdout[-4000:]}"
        assert f"fastapi-doctor: {root_cause}" in (cases[name].find("failure").text or "")
    for name in HEALTHY:
        if name in cases:
            assert not failed(cases[name]), f"{name} failed on PostgreSQL:\n{proc.stdout[-6000:]}"


TEST_MODE_PROBE = r"""
import json, socket, sys, threading
import fastapi_doctor
fastapi_doctor.instrument(test_mode=True, disabled_detectors=["logs"])  # as the plugin starts it
from opentelemetry import metrics, trace
sys.path.insert(0, sys.argv[1])
import os
os.environ["SHOP_DATABASE_URL"] = "sqlite:///" + sys.argv[2]
from app import app
from fastapi.testclient import TestClient
with TestClient(app) as client:
    client.get("/me/orders", headers={"authorization": "Bearer user-1"})
    threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("fastapi-doctor"))
try:
    socket.create_connection(("localhost", 9464), timeout=1).close()
    bound = True
except OSError:
    bound = False
print(json.dumps({
    "threads": threads,
    "side_server": bound,
    "tracer_provider": type(trace.get_tracer_provider()).__name__,
    "meter_provider": type(metrics.get_meter_provider()).__name__,
    "findings": [f["root_cause"] for f in fastapi_doctor.get_findings()],
}))
"""


def test_test_mode_binds_no_port_exports_nothing_and_leaves_the_global_providers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTAPI_DOCTOR_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, "-c", TEST_MODE_PROBE, str(SHOP), str(tmp_path / "shop.db")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["findings"] == ["n_plus_one"]  # the agent works...
    assert not seen["side_server"]  # ...with no side server,
    assert seen["tracer_provider"] == "ProxyTracerProvider"  # no global provider set,
    assert seen["meter_provider"] == "_ProxyMeterProvider"
    # and no thread but the watchdogs (no history, no exporter, no log flusher).
    assert set(seen["threads"]) <= {"fastapi-doctor-loop-watchdog", "fastapi-doctor-db-watchdog"}, seen["threads"]


def test_pyproject_table_sets_thresholds_and_allowed_root_causes(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.fastapi-doctor]\nallow = ["pool_leak"]\nn_plus_one_threshold = 20\n', encoding="utf-8"
    )
    env = {"SHOP_DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}"}
    proc, cases = run_suite(tmp_path, "--doctor", "--rootdir", str(tmp_path), "-k", "orders or summary",
                            suite=SHOP / "test_shop.py", cwd=SHOP, env=env)
    assert not failed(cases["test_my_orders_n_plus_one_sync_session"]), proc.stdout[-4000:]  # 12 < 20
    assert not failed(cases["test_summary_parks_a_sync_session"]), proc.stdout[-4000:]
    leak = findings_of(cases["test_summary_parks_a_sync_session"])
    assert [(f["root_cause"], f["status"]) for f in leak] == [("pool_leak", "allowed")]


def test_a_suite_run_under_the_wrapper_with_warnings_as_errors_starts(tmp_path: Path) -> None:
    # The wrapper imports the agent before pytest; pytest then marks the plugin's package for assertion
    # rewriting, and its "already imported" warning stopped FastAPI's suite (filterwarnings = error).
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    assert 1 + 1 == 2\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FASTAPI_DOCTOR_", "OTEL_"))}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, "-m", "pytest", "-W", "error",
         "-p", "no:cacheprovider", "-q", "test_nothing.py"],
        cwd=tmp_path, env={**clean, "OTEL_EXPORTER_PROMETHEUS_PORT": "0"}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout


# The notes API (tests/apps/pytest_notes): `TestClient(app)` without `with`, a fresh loop per request.
NOTES = ROOT / "tests" / "apps" / "pytest_notes"
NOTES_SICK = {
    "test_login_verifies_the_hash_on_the_loop": ("blocking_io", "hash_password"),  # CPU-bound: the watchdog
    "test_share_fires_and_forgets_a_task": ("task_leak", "share"),  # pending when its request's loop closed
}
NOTES_HEALTHY = {
    "test_login_v2_verifies_in_a_thread",
    "test_share_v2_in_background_tasks",
    "test_list_notes",
    "test_async_client_then_the_test_hashes_on_its_own_loop",  # the suite blocks its own loop: not the app
    "test_login_with_overridden_settings",  # the suite's override builds settings per request: not the app
}


def test_a_client_without_with_a_loop_per_request_blocks_and_task_leaks_fail(tmp_path: Path) -> None:
    env = {"NOTES_DATABASE_URL": f"sqlite:///{tmp_path / 'notes.db'}"}
    proc, cases = run_suite(tmp_path, "--doctor", suite=NOTES / "test_notes.py", cwd=NOTES, env=env)
    assert_sick_fail_healthy_pass(proc, cases, NOTES_SICK, NOTES_HEALTHY)


CONTROLLER_PROBE = '''
import json, os, threading, time

def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the xdist controller
        seen = {"threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("fastapi-doctor")),
                "time.sleep": type(time.sleep).__name__}
        with open(os.environ["PROBE_OUT"], "w") as f:
            json.dump(seen, f)
'''


def test_under_xdist_only_workers_run_the_agent_and_the_controller_lists_their_findings(tmp_path: Path) -> None:
    (tmp_path / "controller_probe.py").write_text(CONTROLLER_PROBE)
    out = tmp_path / "controller-threads.json"
    report = tmp_path / "doctor.json"
    env = {"PROBE_OUT": str(out), "PYTHONPATH": str(tmp_path)}  # each worker its own SQLite file
    proc, cases = run_suite(tmp_path, "--doctor", "-n", "2", "-p", "controller_probe", f"--doctor-json={report}",
                            suite=NOTES / "test_notes.py", cwd=NOTES, env=env)
    # The controller runs no test: no agent there (no watchdog, its own time.sleep not intercepted).
    assert json.loads(out.read_text()) == {"threads": [], "time.sleep": "builtin_function_or_method"}
    for name, (root_cause, function) in NOTES_SICK.items():
        assert failed(cases[name]), f"{name} passed under --doctor -n 2:\n{proc.stdout[-4000:]}"
    # The controller's summary and JSON merge what both workers found.
    summary = proc.stdout.split("fastapi-doctor: ", 1)[-1]
    assert "finding(s)" in proc.stdout, proc.stdout[-4000:]
    assert "blocking_io on POST /login/access-token" in summary and "task_leak on POST /notes/{note_id}/share" in summary
    findings = json.loads(report.read_text())["findings"]
    assert {f["root_cause"] for f in findings if f["status"] == "failed"} == {"blocking_io", "task_leak"}
    # The override in the suite's file builds settings per request: listed as the suite's, not failed.
    assert {f["status"] for f in findings if f["status"] != "failed"} == {"suite_code"}
    assert ("dependency_rebuild", "suite_code") in {(f["root_cause"], f["status"]) for f in findings}


# Two apps in one test process, both with a GET / (as FastAPI's own suite builds hundreds): the large
# response of one is not blamed on the other, nor measured together with its small ones.
TWO_APPS = '''
from fastapi import APIRouter, FastAPI

status = FastAPI()


@status.get("/")
def status_root():
    return {"ok": True}


export = FastAPI()
rows = APIRouter()


@rows.get("/")
def export_rows():
    return {"rows": [{"id": i, "name": "row-%06d" % i, "note": "x" * 40} for i in range(6000)]}


export.include_router(rows)
'''

TWO_APPS_SUITE = '''
from fastapi.testclient import TestClient

from two_apps import export, status


def test_status():
    client = TestClient(status)
    for _ in range(30):
        assert client.get("/", headers={"Accept-Encoding": "gzip"}).json() == {"ok": True}


def test_export():
    client = TestClient(export)
    assert len(client.get("/", headers={"Accept-Encoding": "gzip"}).json()["rows"]) == 6000
'''


def test_two_apps_with_the_same_route_in_one_process_are_judged_apart(tmp_path: Path) -> None:
    (tmp_path / "two_apps.py").write_text(TWO_APPS)
    suite = tmp_path / "test_two_apps.py"
    suite.write_text(TWO_APPS_SUITE)
    proc, cases = run_suite(tmp_path, "--doctor", suite=suite, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert not failed(cases["test_status"]), proc.stdout[-4000:]
    assert failed(cases["test_export"]), proc.stdout[-4000:]
    [finding] = [f for f in findings_of(cases["test_export"]) if f["root_cause"] == "large_payload"]
    assert finding["location"]["function"] == "export_rows", finding
