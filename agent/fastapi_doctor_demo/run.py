"""``fastapi-doctor demo``: the patient under the agent, a load per scenario, and the diagnosis.

Starts the patient (``fastapi_doctor_demo.patient``) under ``opentelemetry-instrument`` in a real
uvicorn process, drives each scenario of :mod:`fastapi_doctor_demo.scenarios` with concurrent
requests, waits for the agent's findings and prints, per scenario, the root cause found with its
route, code location, evidence and fix; then expected vs found. Exits 1 when an expected finding is
missing or an unexpected one appears, 2 when the patient cannot be run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from fastapi_doctor.cli import ReportError, fetch_doctor
from fastapi_doctor.publish import runbooks
from fastapi_doctor.publish.report.terminal import render_finding, render_rows
from fastapi_doctor_demo.scenarios import SCENARIOS, Scenario

PACKAGE_PARENT = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE_PARENT.parent if (PACKAGE_PARENT.parent / "docs").is_dir() else None

# Settings for a run of a few seconds (a FASTAPI_DOCTOR_* variable of the environment wins; everything
# else keeps the agent's defaults).
DEMO_SETTINGS = {
    "FASTAPI_DOCTOR_LEAK_SECONDS": "1",
    "FASTAPI_DOCTOR_TASK_LEAK_SECONDS": "1",
    "FASTAPI_DOCTOR_LOG_REQUESTS": "off",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the patient process ---------------------------------------------------------------------------


class Patient:
    """The patient app in a real server process under ``opentelemetry-instrument``."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        # The app's socket is bound here and handed to uvicorn (--fd): a port only probed free can be
        # taken by another process before uvicorn binds it, and the demo then loads that process.
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(2048)
        self.port = int(self._listener.getsockname()[1])
        self.side_port = _free_port()
        self.log_path = workdir / "patient.log"
        env = {**DEMO_SETTINGS, **os.environ}
        env.update(
            {
                "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(self.side_port),
                "OTEL_SERVICE_NAME": "patient",
                "PATIENT_DATABASE_URL": database_url,
                "PYTHONUNBUFFERED": "1",
                "PYTHONFAULTHANDLER": "1",  # dump_threads: every thread's stack on SIGABRT
            }
        )
        self.env = env
        self.token = env.get("FASTAPI_DOCTOR_AUTH_TOKEN") or None
        bin_dir = Path(sys.executable).parent
        wrapper = bin_dir / "opentelemetry-instrument"
        self.command = [
            str(wrapper) if wrapper.exists() else shutil.which("opentelemetry-instrument") or "opentelemetry-instrument",
            sys.executable, "-m", "uvicorn", "fastapi_doctor_demo.patient:app",
            "--fd", str(self._listener.fileno()), "--no-access-log", "--log-level", "warning",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def side_url(self) -> str:
        return f"http://127.0.0.1:{self.side_port}"

    def start(self, timeout: float = 60.0) -> None:
        self._log = open(self.log_path, "wb")
        # Run from the directory above the package so code locations read fastapi_doctor_demo/….
        self.proc = subprocess.Popen(
            self.command, cwd=PACKAGE_PARENT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, pass_fds=(self._listener.fileno(),),
        )
        self._listener.close()  # the patient holds it now
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the patient exited with code {self.proc.returncode}")
            if _status(self.url + "/healthz") == 200 and self._side_server_is_the_patients():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the patient did not answer within {timeout:.0f} s")
            time.sleep(0.2)

    def _side_server_is_the_patients(self) -> bool:
        """The agent binds the side port itself, in the patient: the port answers for the patient only
        when its ``/doctor`` names the patient's process (another may have taken a port probed free)."""
        document = _fetch(self.side_url + "/doctor", self.token)
        if document is None:
            return False
        try:
            return bool(json.loads(document).get("pid") == self.proc.pid)  # type: ignore[union-attr]
        except (ValueError, AttributeError):
            return False

    def logs(self, last: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-last:])

    def dump_threads(self) -> str:
        """Abort the patient, which prints every thread's stack (faulthandler): where it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.logs()
        try:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        return self.logs(last=300)

    def stop(self) -> None:
        self._listener.close()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


# -- load ----------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    seconds: float = 0.0
    durations: dict[str, list[float]] = field(default_factory=lambda: {"sick": [], "healthy": []})
    errors: list[str] = field(default_factory=list)

    def p50_ms(self, kind: str) -> float | None:
        values = self.durations[kind]
        return statistics.median(values) * 1000 if values else None


def drive(base_url: str, plan: list[tuple[str, str]], concurrency: int, progress: Progress) -> LoadResult:
    """Send the (kind, path) requests of ``plan`` with ``concurrency`` in flight, from threads."""
    result = LoadResult()
    lock = threading.Lock()
    host = urlsplit(base_url)
    local = threading.local()

    def one(item: tuple[str, str]) -> None:
        kind, path = item
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        start = time.perf_counter()
        error = None
        try:
            conn.request("GET", path, headers={"Accept-Encoding": "gzip", "Accept": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status >= 400:
                error = f"GET {path} -> {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            local.conn = None
            error = f"GET {path} -> {type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - start
        with lock:
            result.durations[kind].append(elapsed)
            if error:
                result.errors.append(error)
        progress.advance()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="demo-load") as pool:
        list(pool.map(one, plan))
    result.seconds = time.perf_counter() - started
    progress.done()
    return result


class Progress:
    """A one-line progress bar: redrawn in place on a terminal, printed once when done elsewhere."""

    WIDTH = 30

    def __init__(self, total: int, label: str, out: TextIO) -> None:
        self.total = max(total, 1)
        self.label = label
        self.out = out
        self.count = 0
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._tty = out.isatty()
        self._last_draw = 0.0

    def advance(self) -> None:
        with self._lock:
            self.count += 1
            now = time.perf_counter()
            if self._tty and (now - self._last_draw > 0.05 or self.count == self.total):
                self._last_draw = now
                self.out.write("\r" + self._line())
                self.out.flush()

    def done(self) -> None:
        with self._lock:
            self.out.write(("\r" if self._tty else "") + self._line() + "\n")
            self.out.flush()

    def _line(self) -> str:
        filled = int(self.WIDTH * self.count / self.total)
        elapsed = time.perf_counter() - self.started
        return f"    {self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.count}/{self.total} {elapsed:5.1f} s"


def plan_for(scenario: Scenario, quick: bool) -> list[tuple[str, str]]:
    n = scenario.quick_requests if quick else scenario.requests
    plan: list[tuple[str, str]] = []
    for i in range(n):
        plan.append(("sick", scenario.sick_paths[i % len(scenario.sick_paths)]))
        if scenario.healthy_paths:
            plan.append(("healthy", scenario.healthy_paths[i % len(scenario.healthy_paths)]))
    return plan


# -- verdicts ------------------------------------------------------------------------------------


def matches(scenario: Scenario, finding: dict[str, Any]) -> bool:
    """The finding is this scenario's: its root cause, on its route, at one of its culprits' lines."""
    if finding.get("root_cause") != scenario.root_cause:
        return False
    if scenario.route is not None and finding.get("route") != scenario.route:
        return False
    if scenario.culprits:
        location = finding.get("location") or {}
        return location.get("function") in scenario.culprit_files
    return True


def twin_flagged(scenario: Scenario, unexpected: list[dict[str, Any]]) -> bool:
    if scenario.healthy_route is not None:
        return any(f.get("route") == scenario.healthy_route for f in unexpected)
    return any(f.get("root_cause") == scenario.root_cause for f in unexpected)


def expected(finding: dict[str, Any], scenarios: tuple[Scenario, ...]) -> bool:
    return any(matches(s, finding) for s in scenarios)


def covered(scenario: Scenario, detectors: list[str]) -> bool:
    return any(d in detectors for d in scenario.detectors)


def _poll_findings(side_url: str, token: str | None = None) -> dict[str, Any] | None:
    try:
        return fetch_doctor(side_url, token)
    except ReportError:
        return None


def _final_findings(side_url: str, token: str | None = None, tries: int = 4) -> dict[str, Any]:
    """The /doctor document for the verdict, asked a few times: on a loaded machine one answer can take
    longer than a poll's timeout (a CI run lost its whole verdict to one). Raises ``ReportError``."""
    for _ in range(tries - 1):
        try:
            return fetch_doctor(side_url, token, timeout=10.0)
        except ReportError:
            time.sleep(1.0)
    return fetch_doctor(side_url, token, timeout=10.0)


@dataclass
class Verdict:
    scenario: Scenario
    found: list[dict[str, Any]]
    load: LoadResult
    covered: bool


# -- the run ---------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def run_scenario(patient: Patient, scenario: Scenario, index: int, total: int, quick: bool, out: TextIO) -> Verdict:
    title = f"[{index}/{total}] {scenario.root_cause} - {scenario.title}"
    print(f"\n{title}", file=out)
    if scenario.route is not None:
        print(f"    sick route     GET {scenario.route}", file=out)
    else:
        print(f"    sick route     every route (load on GET {scenario.sick_paths[0]}, ...)", file=out)
    if scenario.healthy_route or scenario.twin:
        print(f"    healthy twin   {f'GET {scenario.healthy_route}' if scenario.healthy_route else scenario.twin}",
              file=out)
    print(f"    the bug        {scenario.bug}", file=out)
    plan = plan_for(scenario, quick)
    progress = Progress(len(plan), "load", out)
    load = drive(patient.url, plan, scenario.concurrency, progress)
    twin = f" · healthy p50 {_ms(load.p50_ms('healthy'))}" if scenario.healthy_paths else ""
    print(f"    sick p50 {_ms(load.p50_ms('sick'))}{twin} · {len(load.errors)} error(s)", file=out)
    if scenario.note:
        print(f"    ({scenario.note})", file=out)
    for error in load.errors[:3]:
        print(f"      {error}", file=out)

    doc = _poll_findings(patient.side_url, patient.token)
    detectors = (doc or {}).get("detectors", [])
    is_covered = covered(scenario, detectors)
    started = time.monotonic()
    found: list[dict[str, Any]] = []
    wait_s = scenario.wait_s if is_covered else 0.0
    while True:
        if doc is not None:
            found = [f for f in doc["findings"] if matches(scenario, f)]
        if found or time.monotonic() - started >= wait_s:
            break
        time.sleep(0.25)
        doc = _poll_findings(patient.side_url, patient.token)
    if found:
        best = max(found, key=lambda f: f.get("count", 1))
        print(f"  FOUND {scenario.root_cause} on {best.get('route') or '(no route)'}", file=out)
        print(render_finding(best, scenario.fix, runbooks.runbook_fixes(scenario.root_cause, REPO_ROOT)), file=out)
    elif not is_covered:
        print(f"  MISSING: no {' or '.join(scenario.detectors)} detector runs in this agent", file=out)
    else:
        print(f"  MISSING: no {scenario.root_cause} finding within {wait_s:.0f} s of the load", file=out)
    return Verdict(scenario, found, load, is_covered)


def main(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        out.reconfigure(errors="replace")  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        pass
    scenarios = SCENARIOS
    only = getattr(args, "only", None)
    if only:
        scenarios = tuple(s for s in SCENARIOS if s.root_cause in only)
    quick = bool(getattr(args, "quick", False))
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="fastapi-doctor-demo-"))
    database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'patient.db'}"
    patient = Patient(database_url, workdir)
    print("fastapi-doctor demo: a sick FastAPI app under the agent", file=out)
    print(f"$ opentelemetry-instrument uvicorn fastapi_doctor_demo.patient:app --port {patient.port}", file=out)
    print(f"  database {_redact(database_url)} · doctor page {patient.side_url}/", file=out)
    try:
        try:
            patient.start()
        except RuntimeError as exc:
            print(f"fastapi-doctor demo: {exc}\n{patient.logs()}", file=sys.stderr)
            return 2
        print(f"  patient up in {time.monotonic() - started:.1f} s", file=out)
        verdicts = [run_scenario(patient, s, i, len(scenarios), quick, out) for i, s in enumerate(scenarios, 1)]
        time.sleep(1.0)  # late findings (and the last chart point) before the verdict
        try:
            doc = _final_findings(patient.side_url, patient.token)
        except ReportError as exc:
            threads = patient.dump_threads()
            # Last, so that a shortened output still shows why: the agent's own log lines.
            agent_lines = [line for line in patient.logs(last=5000).splitlines() if "fastapi-doctor:" in line]
            print(f"fastapi-doctor demo: the agent stopped answering ({exc})\n{threads}\n"
                  "the agent's log lines:\n" + "\n".join(agent_lines[-10:]), file=sys.stderr)
            return 2
        page = _fetch(patient.side_url + "/", patient.token)
        code = summarise(verdicts, doc, scenarios, page, args, started, out)
        if patient.proc is not None and patient.proc.poll() is not None:
            print(f"fastapi-doctor demo: the patient died\n{patient.logs()}", file=sys.stderr)
            return 2
        return code
    finally:
        patient.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def summarise(
    verdicts: list[Verdict],
    doc: dict[str, Any],
    scenarios: tuple[Scenario, ...],
    page: str | None,
    args: argparse.Namespace,
    started: float,
    out: TextIO,
) -> int:
    findings = doc["findings"]
    # Judged against every scenario: with --only, the other sick routes still have their bugs.
    unexpected = [f for f in findings if not expected(f, SCENARIOS)]
    rows = []
    for v in verdicts:
        s = v.scenario
        found_now = [f for f in findings if matches(s, f)]
        where = found_now[0]["location"] if found_now and found_now[0].get("location") else None
        rows.append(
            (
                s.root_cause,
                s.route or "(any route)",
                "found" if found_now else ("MISSING" if v.covered else "MISSING (no detector)"),
                f"{where['file']}:{where['line']}" if where else "-",
                "FLAGGED" if twin_flagged(s, unexpected) else "clean",
            )
        )
    print("\nExpected vs found", file=out)
    print(render_rows(("ROOT CAUSE", "SICK ROUTE", "RESULT", "LOCATION", "TWIN"), rows), file=out)
    if unexpected:
        print(f"\n  {len(unexpected)} unexpected finding(s):", file=out)
        for f in unexpected:
            print(f"  - {f['root_cause']} on {f.get('route') or '(no route)'}: {f.get('summary', '')}", file=out)
            print(render_finding(f, indent="      "), file=out)
    else:
        print("\n  no unexpected finding", file=out)
    missing = [r[0] for r in rows if r[2] != "found"]
    if page is not None:
        report = Path(args.report).resolve()
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(_static(page), encoding="utf-8")
            print(f"\n  HTML report: {report}", file=out)
        except OSError as exc:
            print(f"\n  could not save the HTML report to {report}: {exc}", file=out)
    elapsed = time.monotonic() - started
    ok = not missing and not unexpected
    verdict = "all expected findings, nothing else" if ok else (
        f"{len(missing)} missing, {len(unexpected)} unexpected"
    )
    print(f"  {len(verdicts)} scenario(s) in {elapsed:.0f} s: {verdict}", file=out)
    summary_path = getattr(args, "summary", None)
    if summary_path:
        Path(summary_path).write_text(
            json.dumps(
                {
                    "ok": ok,
                    "seconds": round(elapsed, 1),
                    "detectors": doc.get("detectors", []),
                    "scenarios": [
                        {
                            "root_cause": v.scenario.root_cause,
                            "route": v.scenario.route,
                            "healthy_route": v.scenario.healthy_route,
                            "covered": v.covered,
                            "found": [f for f in findings if matches(v.scenario, f)],
                            "requests": sum(len(d) for d in v.load.durations.values()),
                            "errors": v.load.errors,
                        }
                        for v in verdicts
                    ],
                    "unexpected": unexpected,
                    "report": str(Path(args.report).resolve()) if page is not None else None,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0 if ok else 1


def _fetch(url: str, token: str | None = None) -> str | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode("utf-8"))
    except OSError:
        return None


def _static(page: str) -> str:
    """The saved copy does not reload itself and links the runbooks on disk: the server is gone."""
    from fastapi_doctor.publish.report.html import REFRESH

    return page.replace(REFRESH, "", 1).replace('href="/runbooks/', f'href="{runbooks.DIRECTORY.as_uri()}/')


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
