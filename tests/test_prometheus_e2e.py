"""End to end on a real Prometheus: the demo patient under the agent, one pathology at a time.

A real Prometheus (Debian's /usr/bin/prometheus) scrapes the patient's side server every second. For
the healthy load and for each scenario of ``fastapi_doctor_demo.scenarios`` a fresh patient process
(its own ``instance``) serves the scenario's sick and healthy requests; then

1. every panel query of the generated dashboards runs through Prometheus' HTTP API, and each returns
   data in the scenario its row is meant for;
2. every alert expression is evaluated (``for:`` ignored): alerts on the signals are active only for
   the scenario's root cause and none on the healthy load; each scenario has an active alert of its
   root cause; the healthy load has no alert at all. The confusion matrix is printed.

The alert rules are rendered from the same builders with a 30 s window (the committed rules use 5 m)
so that a load of a few seconds fills it; everything else is as generated.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import AppProcess, wait_until  # noqa: E402

from dashboards import alerts as alert_rules  # noqa: E402
from dashboards import overview  # noqa: E402
from dashboards.config import DEFAULT, ROOT_CAUSES  # noqa: E402
from fastapi_doctor_demo import run as demo_run  # noqa: E402
from fastapi_doctor_demo.scenarios import SCENARIOS  # noqa: E402

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
WINDOW = "30s"
SCENARIO_NAMES = ["healthy", *[s.root_cause for s in SCENARIOS]]

pytestmark = pytest.mark.slow

# Alerts on the agent's findings counter show what the agent's detectors concluded: in a scenario they
# must include the scenario's root cause, and the healthy load must have none; another root cause's
# finding during a scenario is the detectors' cross-talk (printed, not failed here: it is theirs to fix).
# Alerts on the signals must be exactly on the diagonal.
FINDINGS_METRIC = "fastapi_doctor_findings_total"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.targets = workdir / "targets.json"
        self.targets.write_text("[]")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "patient",
                "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
            }],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(lambda: self._get("/-/ready") is not None, timeout=30, interval=0.2)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            body = r.read()
        return json.loads(body) if body.startswith(b"{") else body

    def scrape(self, instance: str | None) -> None:
        self.targets.write_text(json.dumps([{"targets": [instance]}] if instance else []))

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()


def _plan(name: str) -> list[tuple[str, str]]:
    if name == "healthy":  # every healthy twin, and nothing sick
        return [("healthy", p) for s in SCENARIOS for p in s.healthy_paths[:4] for _ in range(2)]
    scenario = next(s for s in SCENARIOS if s.root_cause == name)
    return demo_run.plan_for(scenario, quick=True)


def _drive(url: str, plan: list[tuple[str, str]], rounds: int = 3) -> None:
    """The plan in rounds a couple of scrapes apart: series first seen by Prometheus then grow, as under
    steady traffic (a counter born and finished between two scrapes has no rate)."""
    for i in range(rounds):
        load = demo_run.drive(url, plan[i::rounds], 8, demo_run.Progress(1, "load", io.StringIO()))
        assert load.durations["sick"] or load.durations["healthy"]
        time.sleep(2.5)


def _panel_queries(instance: str) -> list[tuple[str, str, str, str]]:
    """(meant_for, panel title, refId, PromQL) of every generated dashboard panel, variables filled in."""
    specs = {p.title: (row.meant_for, p.meant_for) for row in overview.rows(DEFAULT) for p in row.panels}
    out = []
    for path in sorted((ROOT / "dashboards" / "grafana").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            if panel["type"] == "row":
                continue
            row_for, own_for = specs[panel["title"]]
            for target in panel["targets"]:
                expr = (target["expr"].replace("$__rate_interval", WINDOW).replace("$__range", "1m")
                        .replace("$job", ".*").replace("$instance", instance).replace("$route", ".*"))
                out.append((own_for or row_for, panel["title"], target["refId"], expr))
    return out


def test_panels_and_alerts_on_a_real_prometheus(prometheus: Prometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = [(a.name, a.root_cause, a.expr) for a in alert_rules.alerts(DEFAULT.replace(window=WINDOW))]
    on_findings = {name for name, _, expr in rules if FINDINGS_METRIC in expr}
    matrix: dict[str, dict[str, list[str]]] = {}
    panel_data: dict[str, dict[tuple[str, str], bool]] = {}
    meant: dict[tuple[str, str], str] = {}
    failures: list[str] = []
    for name in SCENARIO_NAMES:
        env = {**demo_run.DEMO_SETTINGS, "PATIENT_SCENARIO": name, "OTEL_SERVICE_NAME": "patient",
               "PATIENT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}"}
        patient = AppProcess("prometheus_patient:app", env=env, ready_path="/healthz").start(timeout=90)
        instance = f"127.0.0.1:{patient.side_port}"
        try:
            prometheus.scrape(instance)
            wait_until(lambda: prometheus.query(f'up{{instance="{instance}"}} == 1'), timeout=30, interval=0.5)
            _drive(patient.url, _plan(name))
            scenario = next((s for s in SCENARIOS if s.root_cause == name), None)
            if scenario is not None:  # the agent's finding, as the demo waits for it
                wait_until(lambda: any(f["root_cause"] == name for f in patient.findings()),
                           timeout=scenario.wait_s + 10, interval=0.5)
            time.sleep(2)  # scrapes after the finding
            matrix[name] = {rc: [] for rc in ROOT_CAUSES}
            for alert, root_cause, expr in rules:
                if any(s["metric"].get("instance") == instance for s in prometheus.query(expr)):
                    matrix[name][root_cause].append(alert)
            panel_data[name] = {}
            for meant_for, title, ref, expr in _panel_queries(instance):
                meant[(title, ref)] = meant_for
                panel_data[name][(title, ref)] = bool(prometheus.query(expr))
        except BaseException:
            print(patient.logs()[-3000:])
            raise
        finally:
            prometheus.scrape(None)
            patient.stop()

    with capsys.disabled():
        print("\nalerts active (expressions, `for:` ignored), scenario x root cause; S: on the signals, F: on findings")
        width = max(len(rc) for rc in ROOT_CAUSES)
        print(" " * 20 + " ".join(rc.rjust(width) for rc in ROOT_CAUSES))
        for name in SCENARIO_NAMES:
            cells = []
            for rc in ROOT_CAUSES:
                signals = len([a for a in matrix[name][rc] if a not in on_findings])
                findings = len(matrix[name][rc]) - signals
                cells.append((f"S{signals} F{findings}" if signals or findings else ".").rjust(width))
            print(name.ljust(20) + " ".join(cells))
        for name in SCENARIO_NAMES:
            active = {rc: a for rc, a in matrix[name].items() if a}
            print(f"  {name}: {active or 'none'}")

    for name in SCENARIO_NAMES:
        expected = set() if name == "healthy" else {name}
        signals = {rc for rc, names in matrix[name].items() if set(names) - on_findings}
        findings = {rc for rc, names in matrix[name].items() if set(names) & on_findings}
        if not signals <= expected:
            failures.append(f"{name}: alerts on the signals of {sorted(signals - expected)} active: {matrix[name]}")
        if not expected <= signals | findings:
            failures.append(f"{name}: no alert of {name} active: {matrix[name]}")
        if name == "healthy" and findings:
            failures.append(f"healthy load: alerts on findings of {sorted(findings)} active: {matrix[name]}")
    for (title, ref), meant_for in meant.items():
        scenarios = [n for n in SCENARIO_NAMES if n != "healthy"] if meant_for == "pathology" else [meant_for]
        for name in scenarios:
            if not panel_data[name][(title, ref)]:
                failures.append(f"panel {title!r} ({ref}) returned no data in the {name} scenario")
    assert not failures, "\n".join(failures)
