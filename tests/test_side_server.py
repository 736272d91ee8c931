"""The side server's access rules and /profile, through a real server process.

Token: /, /doctor and /profile need ``Authorization: Bearer <token>`` when FASTAPI_DOCTOR_AUTH_TOKEN is
set; /metrics and /healthz stay open unless FASTAPI_DOCTOR_PROTECT_METRICS. Profiling: off by
default; when on, one profile at a time, bad parameters refused with the reason.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from harness import APPS, BIN, ROOT, AppProcess, wait_until

TOKEN = "s3cret-Token-4242"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def guarded() -> Iterator[AppProcess]:
    """Token set, profiling on."""
    app = AppProcess(
        "side_server_app:app",
        env={"FASTAPI_DOCTOR_AUTH_TOKEN": TOKEN, "FASTAPI_DOCTOR_PROFILING": "true"},
        ready_path="/other",
    )
    app.start()
    try:
        yield app
    finally:
        app.stop()


def _get(app: AppProcess, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> httpx.Response:
    return httpx.get(app.side_url + path, headers=headers or {}, timeout=timeout)


@pytest.mark.parametrize("path", ["/", "/doctor", "/profile?route=/other&seconds=1"])
def test_token_required_on_findings_and_profile(guarded, path):
    refused = _get(guarded, path)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.json() == {"error": "unauthorized"}
    # Nothing of the page or the findings leaks into the refusal.
    assert "fastapi-doctor —" not in refused.text and "findings" not in refused.text


def test_token_accepted(guarded):
    page = _get(guarded, "/", GOOD)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>fastapi-doctor — test-app</h1>" in page.text
    doctor = _get(guarded, "/doctor", GOOD)
    assert doctor.status_code == 200 and doctor.json()["service"] == "test-app"


def test_auth_scheme_is_case_insensitive(guarded):
    for scheme in ("bearer", "BEARER", "BeArEr"):
        assert _get(guarded, "/doctor", {"Authorization": f"{scheme} {TOKEN}"}).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        f"Bearer  {TOKEN}",  # two spaces
        f"Bearer {TOKEN} ",
        f"Bearer {TOKEN} extra",
        f"Bearer {TOKEN[:-1]}",  # a prefix of the token
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        TOKEN,
        f"Bearer\t{TOKEN}",
        "Bearer wrong-token-0000",
        f"Bearer {TOKEN.upper()}",
        f"Bearer {TOKEN}é",  # not ASCII
    ],
)
def test_malformed_or_wrong_authorization_is_refused(guarded, header):
    # http.client sends the bytes as given (httpx would refuse some of these values itself).
    conn = http.client.HTTPConnection("127.0.0.1", guarded.side_port, timeout=10)
    try:
        conn.putrequest("GET", "/doctor")
        conn.putheader("Authorization", header.encode("utf-8"))
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 401
    assert json.loads(body) == {"error": "unauthorized"}


def test_metrics_and_healthz_stay_open_and_the_token_is_never_written(guarded):
    assert _get(guarded, "/healthz").text == "ok\n"
    metrics = _get(guarded, "/metrics")
    assert metrics.status_code == 200 and "http_server_request_duration_seconds" in metrics.text
    assert TOKEN not in metrics.text
    assert TOKEN not in _get(guarded, "/", GOOD).text
    assert TOKEN not in guarded.logs()


def test_report_cli_uses_the_token(guarded):
    cli = str(BIN / "fastapi-doctor")
    ok = subprocess.run([cli, "report", "--url", guarded.side_url, "--token", TOKEN, "--json"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and json.loads(ok.stdout)["service"] == "test-app"
    refused = subprocess.run([cli, "report", "--url", guarded.side_url], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "answered HTTP 401 (set --token)" in refused.stderr


def test_protect_metrics_and_profiling_off(serve):
    app = serve("side_server_app:app", env={"FASTAPI_DOCTOR_AUTH_TOKEN": TOKEN,
                                            "FASTAPI_DOCTOR_PROTECT_METRICS": "true"}, ready_path="/other")
    assert _get(app, "/metrics").status_code == 401
    assert _get(app, "/metrics", GOOD).status_code == 200
    assert _get(app, "/healthz").status_code == 200
    off = _get(app, "/profile?route=/other&seconds=1", GOOD)
    assert off.status_code == 404
    assert "FASTAPI_DOCTOR_PROFILING=true" in off.json()["error"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "give exactly one route"),
        ("?route=/other&route=/work/{n}", "give exactly one route"),
        ("?route=other", "route must be a route template starting with '/'"),
        ("?route=/other&seconds=abc", "seconds must be a number above 0 and at most 60"),
        ("?route=/other&seconds=0", "seconds must be a number above 0 and at most 60"),
        ("?route=/other&seconds=-1", "seconds must be a number above 0 and at most 60"),
        ("?route=/other&seconds=61", "seconds must be a number above 0 and at most 60"),
        ("?route=/other&seconds=nan", "seconds must be a number above 0 and at most 60"),
        ("?route=/other&seconds=inf", "seconds must be a number above 0 and at most 60"),
        ("?route=/other&seconds=1&seconds=2", "give seconds once"),
        ("?route=/nowhere/{x}&seconds=1", "no route '/nowhere/{x}' in the app; routes: "),
    ],
)
def test_profile_bad_parameters_get_400_with_the_reason(guarded, query, reason):
    response = _get(guarded, "/profile" + query, GOOD)
    assert response.status_code == 400
    assert response.json()["error"].startswith(reason)


def test_profile_of_a_route_one_at_a_time(guarded):
    expected = httpx.get(guarded.url + "/api/work/3").content
    result: dict[str, Any] = {}

    def profile() -> None:
        # Retried while one of the short probes below holds the profiler.
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                response = _get(guarded, "/profile?route=/api/work/{n}&seconds=3", GOOD, timeout=60)
                if response.status_code != 409:
                    break
            result["profile"] = response
        except Exception as exc:  # shown by the probe below instead of dying unseen in this thread
            result["profile"] = exc

    def refused_probe() -> httpx.Response | bool:
        # The long profile ended without holding the profiler while a probe looked: nothing to wait for.
        assert "profile" not in result, f"the long profile ended first: {result['profile']!r}"
        probe = _get(guarded, "/profile?route=/other&seconds=0.01", GOOD)
        return probe.status_code == 409 and probe

    thread = threading.Thread(target=profile)
    thread.start()
    try:
        # Short probes until one is refused: then the long profile is armed (probes run one at a time).
        busy = wait_until(refused_probe, timeout=20, interval=0.1)
        assert busy.json() == {"error": "a profile is already running; try again when it ends"}
        # Profiled requests answer exactly as unprofiled ones.
        for _ in range(5):
            assert httpx.get(guarded.url + "/api/work/3").content == expected
            assert httpx.get(guarded.url + "/other").json() == {"status": "ok"}
    finally:
        thread.join(timeout=60)
    response = result["profile"]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    # pyinstrument's page with the profiled route's own work in it, and not the other route's.
    assert "pyinstrument" in response.text
    assert '"identifier": "crunch_numbers\\u0000' in response.text
    assert "side_server_app.py" in response.text
    assert "tally_words" not in response.text
    # Once it has ended, the next profile may start; with no request in its window it says so.
    empty = _get(guarded, "/profile?route=/other&seconds=0.5", GOOD)
    assert empty.status_code == 200 and "No request of <code>/other</code> started within 0.5 s" in empty.text


UNDO_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import httpx
import fastapi_doctor
from fastapi_doctor import _agent
from side_server_app import app
from fastapi.testclient import TestClient

fastapi_doctor.instrument(app, profiling=True, prometheus_port=0, prometheus_host="127.0.0.1")
agent = _agent.get()
hooks, profiling, history = agent.fastapi, agent.profiling, agent.history
with TestClient(app) as client:
    client.get("/other")
before = {
    "gate_installed": profiling.wrap in hooks.stack_wrappers,
    "gate_in_stack": "ProfileGate" in repr(type(app.middleware_stack.app)),
    "history_running": history.running,
}
port = agent.server.port
fastapi_doctor.uninstrument()
try:
    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    server_gone = False
except httpx.HTTPError:
    server_gone = True
after = {
    "gate_installed": profiling.wrap in hooks.stack_wrappers,
    "armed": profiling.armed,
    "history_running": history.running,
    "server_gone": server_gone,
}
print(json.dumps({"before": before, "after": after}))
"""


def test_uninstrument_removes_the_profiling_gate_and_stops_the_history():
    out = subprocess.run([sys.executable, "-c", UNDO_SCRIPT, str(APPS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] == {"gate_installed": True, "gate_in_stack": True, "history_running": True}
    assert result["after"] == {"gate_installed": False, "armed": None, "history_running": False, "server_gone": True}


def test_profiling_off_adds_nothing_to_the_stack():
    script = UNDO_SCRIPT.replace("profiling=True", "profiling=False")
    out = subprocess.run([sys.executable, "-c", script, str(APPS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"]["gate_installed"] is False and result["before"]["gate_in_stack"] is False


def test_runbooks_are_served_next_to_the_findings(guarded):
    for root_cause in ("blocking_io", "pool_leak", "n_plus_one"):
        page = _get(guarded, f"/runbooks/{root_cause}.md", GOOD)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/markdown")
        assert page.text == (ROOT / "docs" / "runbooks" / f"{root_cause}.md").read_text()
    assert _get(guarded, "/runbooks/../../etc/passwd", GOOD).status_code == 404
    assert _get(guarded, "/runbooks/gremlins.md", GOOD).status_code == 404


# -- slow and idle clients: a scrape is answered while they go on -----------------------------------------


def _connect(port: int, source: str) -> socket.socket | None:
    try:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
        return sock
    except OSError:
        return None


def _scrape_seconds(app: AppProcess) -> float:
    started = time.monotonic()
    response = httpx.get(app.side_url + "/metrics", timeout=3)
    assert response.status_code == 200 and "http_server_request_duration_seconds" in response.text
    return time.monotonic() - started


def test_scrapes_are_answered_while_slow_and_idle_clients_hold_connections(serve):
    app = serve("rel_app:app")
    httpx.get(app.url + "/items/1")
    # One client (127.0.0.2) opens 20 connections sending one header byte every 4 s, and 500 that send
    # nothing; before, /metrics went unanswered for as long as they stayed.
    dripping = [s for s in (_connect(app.side_port, "127.0.0.2") for _ in range(20)) if s]
    idle = [s for s in (_connect(app.side_port, "127.0.0.2") for _ in range(500)) if s]
    stop = threading.Event()

    def drip() -> None:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
            for sock in dripping:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    pass
            if stop.wait(4):
                return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        # Scrapes from another client, and from the same one, are answered at once all along.
        for _ in range(4):
            assert _scrape_seconds(app) < 2
            same_client = socket.create_connection(("127.0.0.1", app.side_port), timeout=3,
                                                   source_address=("127.0.0.2", 0))
            with same_client:
                same_client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert same_client.recv(100).startswith(b"HTTP/1.0 200")
            stop.wait(1.5)
        # Each connection has a deadline for its whole request: the dripping ones are closed too.
        def closed(sock: socket.socket) -> bool:
            try:
                sock.settimeout(0.01)
                return sock.recv(1) == b""
            except (TimeoutError, BlockingIOError):
                return False
            except OSError:
                return True

        wait_until(lambda: all(closed(s) for s in dripping), timeout=15)
    finally:
        stop.set()
        dripper.join()
        for sock in dripping + idle:
            sock.close()
    assert "internal error" not in app.logs()


# -- exposure -------------------------------------------------------------------------------------------


WIDE_OPEN = "listens on 0.0.0.0:{port} without FASTAPI_DOCTOR_AUTH_TOKEN"


def test_a_side_server_open_to_the_network_without_a_token_says_so_once(serve):
    app = serve("rel_app:app", env={"OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0"})
    httpx.get(app.side_url + "/healthz")
    assert app.logs().count(WIDE_OPEN.format(port=app.side_port)) == 1
    guarded = serve("rel_app:app", env={"OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0", "FASTAPI_DOCTOR_AUTH_TOKEN": TOKEN})
    assert httpx.get(guarded.side_url + "/doctor").status_code == 401
    assert "without FASTAPI_DOCTOR_AUTH_TOKEN" not in guarded.logs()
