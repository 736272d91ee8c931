"""The fleet view (issue 22): a finding reported by several workers and replicas is one row, with the
instances that report it, its location and its occurrences summed.

Real processes of tests/apps/fleet_app.py under the wrapper: a prefork server (uvicorn --workers 2,
gunicorn -w 3) whose workers each serve the N+1 and the blocking route, two separate replicas, a real
Prometheus (/usr/bin/prometheus) scraping every worker's side server, and the harness's OTLP/gRPC
receiver. ``fastapi-doctor report`` is run as a user runs it, and its answer is checked against each
worker's own ``/doctor``.
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
from harness import BIN, AppProcess, OTLPReceiver, concurrent_get, side_servers, wait_until
from test_prometheus_e2e import Prometheus

from dashboards import alerts as alert_rules
from dashboards.config import DEFAULT

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "grafana" / "fastapi-doctor-overview.json"
HEADERS = {"authorization": f"Bearer {create_access_token(1)}", "Connection": "close"}
N_PLUS_ONE = "/api/authors/"
BLOCKING = "/api/reports/daily"


def prefork(server: list[str], workers: int, env: dict[str, str] | None = None) -> AppProcess:
    app = AppProcess("fleet_app:app", env={"OTEL_TRACES_SAMPLER_ARG": "0", **(env or {})}, ready_path="/health")
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
GUNICORN_3 = ["{bin}/gunicorn", "-w", "3", "-k", "uvicorn.workers.UvicornWorker", "-b", "127.0.0.1:{port}"]


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


def finding_events(otlp: OTLPReceiver) -> list[dict[str, Any]]:
    """The ``fastapi_doctor.finding`` log events the receiver got: their attributes and the ``process.pid``
    of the process that sent each."""
    events = []
    for request in list(otlp.log_requests):
        for rl in request.resource_logs:
            pid = next(kv.value.int_value for kv in rl.resource.attributes if kv.key == "process.pid")
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    if record.event_name == "fastapi_doctor.finding":
                        attrs = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in record.attributes}
                        events.append({"pid": pid, "attributes": attrs})
    return events


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


def test_report_from_prometheus_shows_each_finding_once_with_every_instance_that_reports_it(prometheus, otlp):
    """The issue's done-criterion: three gunicorn workers and two more replicas, one Prometheus."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BLRP_SCHEDULE_DELAY": "100",
           "FASTAPI_DOCTOR_LOG_REPEAT_SECONDS": "600"}  # one event per finding and process in this test
    fleet = prefork(GUNICORN_3, 3, env)
    replicas = [AppProcess("fleet_app:app", env={"OTEL_TRACES_SAMPLER_ARG": "0", **env}, ready_path="/health")
                for _ in range(2)]
    try:
        for replica in replicas:
            replica.start(timeout=30)
        workers = side_servers(fleet.side_port)
        ports = [s["port"] for s in workers.values()] + [r.side_port for r in replicas]
        instances = [f"127.0.0.1:{p}" for p in ports]
        assert len(set(instances)) == 5
        prometheus.targets.write_text(json.dumps([{"targets": instances, "labels": {"job": "library"}}]))
        wait_until(lambda: len(prometheus.query('up{job="library"} == 1')) == 5, timeout=30, interval=0.5)

        serve_everywhere(fleet.url, N_PLUS_ONE, set(workers))
        for replica in replicas:
            serve_everywhere(replica.url, N_PLUS_ONE, {replica.proc.pid})
        # A block is a finding once it recurs in a worker: two rounds over the workers.
        for _ in range(2):
            serve_everywhere(fleet.url, BLOCKING, set(workers), rounds=8)
            for replica in replicas:
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
        assert {i["instance"] for i in n_plus_one["instances"]} == set(instances)  # 3 workers + 2 replicas
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

        # The OTLP receiver: each process sent one log event per finding it holds, with its line of code.
        pid_of = {i: d["pid"] for i, d in documents().items()}
        want = {(pid_of[i["instance"]], f["id"]) for f in doc["findings"] for i in f["instances"]}
        def all_sent() -> list[dict[str, Any]] | None:
            events = finding_events(otlp)
            return events if {(e["pid"], e["attributes"]["finding_id"]) for e in events} >= want else None

        try:
            events = wait_until(all_sent, timeout=15, interval=0.2)
        except AssertionError:
            got = sorted((e["pid"], e["attributes"]["finding_id"]) for e in finding_events(otlp))
            raise AssertionError(f"log events (pid, finding_id) {got}, expected {sorted(want)}") from None
        assert sorted((e["pid"], e["attributes"]["finding_id"]) for e in events) == sorted(want)  # once each
        by_id = {f["id"]: f for f in doc["findings"]}
        for event in events:
            attrs, finding = event["attributes"], by_id[event["attributes"]["finding_id"]]
            assert (attrs["root_cause"], attrs["http.route"], attrs["code.file.path"], attrs["code.line.number"],
                    attrs["code.function.name"]) == (finding["root_cause"], finding["route"], "fleet_app.py",
                                                     finding["location"]["line"], finding["location"]["function"])
    except BaseException:
        print(fleet.logs()[-3000:], *(r.logs()[-2000:] for r in replicas))
        raise
    finally:
        for replica in replicas:
            replica.stop()
        fleet.stop()


def test_the_page_of_a_worker_links_the_pages_of_its_siblings():
    app = prefork(UVICORN_2, 2)
    try:
        servers = side_servers(app.side_port)
        ports = {s["port"] for s in servers.values()}
        assert len(ports) == 2
        for port in ports:
            page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text
            [other] = ports - {port}
            assert f'data-port="{other}"' in page and f'href="http://127.0.0.1:{other}/"' in page
            assert f'data-port="{port}"' not in page
        # A process that is not a worker of a prefork server has no siblings to link.
        single = AppProcess("fleet_app:app", env={"OTEL_TRACES_SAMPLER_ARG": "0"}, ready_path="/health").start(timeout=30)
        try:
            assert "data-port=" not in httpx.get(single.side_url + "/", timeout=10).text
        finally:
            single.stop()
    finally:
        app.stop()
