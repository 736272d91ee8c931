"""The fleet view (issue 22): a finding reported by several workers and replicas is one row, with the
instances that report it, its location and its occurrences summed.

Real processes of tests/apps/fleet_app.py under the wrapper: a prefork server (uvicorn --workers 2,
gunicorn -w 2) whose workers each serve the N+1 and the blocking route, a separate replica, and a
real Prometheus (/usr/bin/prometheus) scraping every worker's side server. ``fastapi-doctor report``
is run as a user runs it, and its answer is checked against each worker's own ``/doctor``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps.fullstack_security import create_access_token
from harness import BIN, AppProcess, concurrent_get, side_servers, wait_until
from test_prometheus_e2e import Prometheus

from dashboards import alerts as alert_rules
from dashboards.config import DEFAULT

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "grafana" / "fastapi-doctor-overview.json"
HEADERS = {"authorization": f"Bearer {create_access_token(1)}", "Connection": "close"}
N_PLUS_ONE = "/api/authors/"
BLOCKING = "/api/reports/daily"


def prefork(server: list[str], workers: int) -> AppProcess:
    app = AppProcess("fleet_app:app", env={"OTEL_TRACES_SAMPLER_ARG": "0"}, ready_path="/health")
    command = [part.format(bin=BIN, port=app.port) for part in server]
    app.command = [str(BIN / "opentelemetry-instrument"), *command, "fleet_app:app"]
    app.start(timeout=60)
    try:
        wait_until(lambda: len(side_servers(app.side_port)) >= workers, timeout=30)
    except BaseException:
        print(app.logs()[-3000:])
        app.stop()
        raise
    return app


UVICORN_2 = ["{bin}/uvicorn", "--workers", "2", "--host", "127.0.0.1", "--port", "{port}", "--no-access-log"]
GUNICORN_2 = ["{bin}/gunicorn", "-w", "2", "-k", "uvicorn.workers.UvicornWorker", "-b", "127.0.0.1:{port}"]


def serve_everywhere(url: str, path: str, workers: set[int], rounds: int = 40) -> set[int]:
    """Requests on fresh connections until every worker of ``workers`` served ``path``; their pids."""
    served: set[int] = set()

    def spread() -> bool:
        for r in concurrent_get(url + path, 8, concurrency=4, headers=HEADERS):
            assert r.status_code == 200, r.text[:300]
        for r in concurrent_get(url + "/health", 8, concurrency=4, headers=HEADERS):
            served.add(r.json()["pid"])
        return workers <= served

    wait_until(spread, timeout=60, interval=0.1)
    return served


def report(*args: str) -> tuple[int, str, str]:
    done = subprocess.run([str(BIN / "fastapi-doctor"), "report", *args], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_report_merges_the_workers_of_a_prefork_server_by_finding_id():
    app = prefork(UVICORN_2, 2)
    try:
        pids = set(side_servers(app.side_port))

        def every_worker_found_it() -> dict[int, dict[str, Any]]:
            for _ in range(4):
                httpx.get(app.url + N_PLUS_ONE, headers=HEADERS, timeout=30)
            servers = side_servers(app.side_port)
            found = {pid: s for pid, s in servers.items()
                     if any(f["root_cause"] == "n_plus_one" for f in s["doctor"]["findings"])}
            return servers if set(found) >= pids else {}

        servers = wait_until(every_worker_found_it, timeout=60, interval=0.2)
        urls = [f"http://127.0.0.1:{s['port']}" for s in servers.values()]
        code, out, err = report(*[a for u in urls for a in ("--url", u)], "--json")
        assert code == 0, err
        doc = json.loads(out)
        [row] = [f for f in doc["findings"] if f["root_cause"] == "n_plus_one"]
        own = [next(f for f in s["doctor"]["findings"] if f["root_cause"] == "n_plus_one") for s in servers.values()]
        assert {f["id"] for f in own} == {row["id"]}  # the same id in every worker
        assert sorted(i["pid"] for i in row["instances"]) == sorted(servers)
        assert row["count"] >= sum(f["count"] for f in own)  # read after the workers' own documents
        assert row["first_seen"] == min(f["first_seen"] for f in own)
        assert row["location"] == own[0]["location"] and row["route"] == N_PLUS_ONE

        code, out, _ = report(*[a for u in urls for a in ("--url", u)])
        assert code == 0
        assert "n_plus_one" in out and f"fleet_app.py:{row['location']['line']}" in out
        for pid in servers:
            assert f"(pid {pid})" in out

        # An unreachable worker is named; the others are still reported.
        dead = f"http://127.0.0.1:{app.side_port + 7}"
        code, out, err = report("--url", urls[0], "--url", dead)
        assert code == 0 and dead in err and "unreachable: " + dead in out
    finally:
        app.stop()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_report_from_prometheus_shows_each_finding_once_with_every_instance_that_reports_it(prometheus):
    fleet = prefork(GUNICORN_2, 2)
    replica = AppProcess("fleet_app:app", env={"OTEL_TRACES_SAMPLER_ARG": "0"}, ready_path="/health")
    try:
        replica.start(timeout=30)
        workers = side_servers(fleet.side_port)
        ports = [s["port"] for s in workers.values()] + [replica.side_port]
        instances = [f"127.0.0.1:{p}" for p in ports]
        prometheus.targets.write_text(json.dumps([{"targets": instances, "labels": {"job": "library"}}]))
        wait_until(lambda: len(prometheus.query('up{job="library"} == 1')) == 3, timeout=30, interval=0.5)

        serve_everywhere(fleet.url, N_PLUS_ONE, set(workers))
        serve_everywhere(replica.url, N_PLUS_ONE, {replica.proc.pid})
        # A block is a finding once it recurs in a worker: two rounds over the workers.
        for _ in range(2):
            serve_everywhere(fleet.url, BLOCKING, set(workers), rounds=8)
            for _ in range(2):
                httpx.get(replica.url + BLOCKING, headers=HEADERS, timeout=30)

        def documents() -> dict[str, dict[str, Any]]:
            return {i: httpx.get(f"http://{i}/doctor", timeout=5).json() for i in instances}

        def blocking_found() -> bool:
            return any(f["root_cause"] == "blocking_io" for d in documents().values() for f in d["findings"])

        wait_until(blocking_found, timeout=30, interval=0.5)

        def expected() -> dict[str, dict[str, Any]]:
            """finding_id -> {"instances", "count", "location"} from the workers' own /doctor."""
            rows: dict[str, dict[str, Any]] = {}
            for instance, doc in documents().items():
                for f in doc["findings"]:
                    row = rows.setdefault(f["id"], {"instances": set(), "count": 0, "location": f["location"],
                                                     "root_cause": f["root_cause"], "route": f["route"]})
                    row["instances"].add(instance)
                    row["count"] += f["count"]
            return rows

        def reported() -> dict[str, Any] | None:
            code, out, err = report("--prometheus", f"http://127.0.0.1:{prometheus.port}",
                                    "--selector", '{job="library"}', "--json")
            assert code == 0, err
            doc = json.loads(out)
            want = expected()
            got = {f["id"]: {"instances": {i["instance"] for i in f["instances"]}, "count": f["count"],
                             "location": f["location"], "root_cause": f["root_cause"], "route": f["route"]}
                   for f in doc["findings"]}
            return doc if got == want else None  # equal once Prometheus scraped the last occurrences

        doc = wait_until(reported, timeout=30, interval=1.0)
        ids = [f["id"] for f in doc["findings"]]
        assert len(ids) == len(set(ids))  # each finding once
        [n_plus_one] = [f for f in doc["findings"] if f["route"] == N_PLUS_ONE]
        assert {i["instance"] for i in n_plus_one["instances"]} == set(instances)  # 2 workers + the replica
        assert n_plus_one["location"]["function"] == "list_authors"
        assert n_plus_one["first_seen"] <= n_plus_one["last_seen"]
        blocking = [f for f in doc["findings"] if f["root_cause"] == "blocking_io"]
        assert blocking and all(f["location"]["function"] == "daily_report" for f in blocking)
        rates = [f["rate"] for f in doc["findings"]]
        assert rates == sorted(rates, reverse=True)  # by impact

        # The overview dashboard's findings table, as Grafana runs it: the same rows.
        panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"].startswith("Findings"))
        exprs = {t["refId"]: (t["expr"].replace("$job", "library").replace("$instance", ".*").replace("$route", ".*")
                              .replace("$__rate_interval", "1m").replace("$__range", "5m"))
                 for t in panel["targets"]}
        table = {r["metric"]["finding_id"]: r for r in prometheus.query(exprs["A"])}
        assert set(table) == {f["id"] for f in doc["findings"]}
        for f in doc["findings"]:
            labels = table[f["id"]]["metric"]
            assert int(table[f["id"]]["value"][1]) == len(f["instances"])  # replicas
            assert (labels["root_cause"], labels["http_route"], labels["code_function_name"],
                    int(labels["code_line_number"])) == (f["root_cause"], f["route"], f["location"]["function"],
                                                         f["location"]["line"])
        for ref in ("B", "C"):
            assert {r["metric"]["finding_id"] for r in prometheus.query(exprs[ref])} == set(table)

        # The N+1 finding's alert, on each instance, carries the line of code.
        [rule] = [a for a in alert_rules.alerts(DEFAULT.replace(alert_selector='job="library"'))
                  if a.name == "FastAPIDoctorNPlusOneFinding"]
        fired = prometheus.query(rule.expr)
        assert {r["metric"]["instance"] for r in fired} == set(instances)
        assert {(r["metric"]["code_file_path"], r["metric"]["code_line_number"], r["metric"]["code_function_name"])
                for r in fired} == {("fleet_app.py", str(n_plus_one["location"]["line"]), "list_authors")}

        code, out, _ = report("--prometheus", f"http://127.0.0.1:{prometheus.port}", "--selector", 'job="library"')
        assert code == 0 and "fleet_app.py" in out and "list_authors" not in out.split("\n")[0]
        for instance in instances:
            assert instance in out

        # Another job's selector matches nothing; an unreachable Prometheus exits 2 with the reason.
        code, out, _ = report("--prometheus", f"http://127.0.0.1:{prometheus.port}", "--selector", '{job="other"}',
                              "--json")
        assert code == 0 and json.loads(out)["findings"] == []
        code, _, err = report("--prometheus", f"http://127.0.0.1:{fleet.side_port + 7}")
        assert code == 2 and "cannot reach Prometheus" in err
    except BaseException:
        print(fleet.logs()[-3000:], replica.logs()[-2000:])
        raise
    finally:
        replica.stop()
        fleet.stop()
