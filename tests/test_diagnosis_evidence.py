"""Diagnosis on apps shaped like real services (tests/apps/fullstack_*.py: routers with prefixes,
CORS, an auth dependency that decodes a token and loads the user by primary key, sync and async
SQLAlchemy sessions on SQLite and PostgreSQL), one realistic mistake at a time, under a real uvicorn.

A finding must rest on evidence of its cause: a dependency is "rebuilt" when it builds an expensive
object again per request (not when it is slow); a pool too small for the load is one pool finding
naming the pool and its holders (not a slow dependency); a slow upstream call in a sync endpoint is
one threadpool finding on that line.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import APPS, AppProcess, metric_value, wait_until, wrk_get

SYNC = APPS / "fullstack_sync.py"
ASYNC = APPS / "fullstack_async.py"


def marked(path: Path, marker: str) -> dict[str, Any]:
    """File and line of ``# mark: <marker>`` in ``path`` (no hard-coded line numbers)."""
    lines = [n for n, text in enumerate(path.read_text().splitlines(), 1) if text.rstrip().endswith(f"# mark: {marker}")]
    assert len(lines) == 1, marker
    return {"file": path.name, "line": lines[0]}


def at(finding: dict[str, Any]) -> dict[str, Any]:
    return {"file": finding["location"]["file"], "line": finding["location"]["line"]}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """``db(kind)``: a database URL for the sync ("psycopg") or async driver, on SQLite or PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        return lambda kind: f"sqlite:///{path}" if kind == "sync" else f"sqlite+aiosqlite:///{path}"
    postgres = request.getfixturevalue("postgres")
    name = request.getfixturevalue("pg_database")
    return lambda kind: postgres.url(name, driver="psycopg" if kind == "sync" else "asyncpg")


class Client:
    """Logs in once, then hammers the app with ``concurrency`` clients for ``seconds``."""

    def __init__(self, app: AppProcess, sync: bool) -> None:
        self.app = app
        self.base = app.url + ("/api/v1" if sync else "/api")
        if sync:
            response = httpx.post(self.base + "/login/access-token",
                                  data={"username": "user1@example.com", "password": "secret"})
        else:
            response = httpx.post(self.base + "/auth/token", json={"email": "user1@example.com", "password": "secret"})
        response.raise_for_status()
        self.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}

    def get(self, path: str, n: int = 1) -> list[httpx.Response]:
        with httpx.Client(timeout=60, headers=self.headers) as client:
            return [client.get(self.base + path) for _ in range(n)]

    def load(self, paths: list[str], concurrency: int, seconds: float) -> list[int]:
        statuses: list[int] = []
        deadline = time.monotonic() + seconds

        def one(k: int) -> None:
            with httpx.Client(timeout=60, headers=self.headers) as client:
                i = k
                while time.monotonic() < deadline:
                    statuses.append(client.get(self.base + paths[i % len(paths)]).status_code)
                    i += 1

        threads = [threading.Thread(target=one, args=(k,)) for k in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return statuses


def worker_findings(app: AppProcess) -> list[dict[str, Any]]:
    """blocking_io findings about worker threads (the threadpool's and the pool's; the event loop's own
    findings about the loop are another signal's)."""
    return [f for f in app.findings("blocking_io") if f["evidence"].get("signal") in ("threadpool", "db_pool")]


def start(serve: Callable[..., AppProcess], app: str, url: str, **env: str) -> AppProcess:
    return serve(app, env={"DB_URL": url, **env})


# -- slow is not rebuilt ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_healthy_auth_app_under_concurrent_load_has_no_rebuild_and_no_pool_finding(serve, db, kind):
    app = start(serve, f"fullstack_{kind}:app", db(kind))
    client = Client(app, sync=kind == "sync")
    paths = ["/users/me", "/items/" if kind == "sync" else "/articles"]
    statuses = client.load(paths, concurrency=12, seconds=8)  # fewer clients than the pool's 5 + 10
    assert set(statuses) == {200} and len(statuses) > 50
    # The auth dependency decodes a token and loads the user by primary key: necessary work, and
    # under load it waits for the CPU, the GIL and the database. Waiting is not rebuilding.
    time.sleep(1.5)  # the watchdogs' rounds after the load
    assert app.findings("dependency_rebuild") == []
    assert app.findings("pool_leak") == []


# One row per realistic mistake: (app, MISTAKE, what is rebuilt, the marked line, the dependency).
REBUILDS = [
    ("sync", "engine_per_request", "sqlalchemy.engine.Engine", "engine per request", "get_db_engine_per_request"),
    ("sync", "sessionmaker_per_request", "sqlalchemy.orm.sessionmaker", "sessionmaker per request",
     "get_db_sessionmaker_per_request"),
    ("sync", "settings_per_request", "pydantic_settings.BaseSettings", "settings per request", "get_settings_per_request"),
    ("sync", "client_per_request", "requests.Session", "requests session per request", "get_http_per_request"),
    ("async", "engine_per_request", "sqlalchemy.engine.Engine", "engine per request", "get_session_engine_per_request"),
    ("async", "client_per_request", "httpx.AsyncClient", "client per request", "get_http_per_request"),
]


@pytest.mark.parametrize(("kind", "mistake", "obj", "mark", "dependency"), REBUILDS, ids=[f"{r[0]}-{r[1]}" for r in REBUILDS])
def test_an_expensive_object_built_in_every_request_is_a_rebuild_naming_it_and_its_line(
    serve, tmp_path, kind, mistake, obj, mark, dependency
):
    url = f"sqlite:///{tmp_path / 'a.db'}" if kind == "sync" else f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    app = start(serve, f"fullstack_{kind}:app", url, MISTAKE=mistake)
    client = Client(app, sync=kind == "sync")
    route = "/api/v1/items/" if kind == "sync" else "/api/articles"
    assert {r.status_code for r in client.get(route.removeprefix("/api/v1").removeprefix("/api"), n=5)} == {200}
    found = wait_until(lambda: [f for f in app.findings("dependency_rebuild") if f["evidence"].get("object") == obj])
    assert len(found) == 1, app.findings()
    (f,) = found
    assert f["route"] == route
    assert at(f) == marked(SYNC if kind == "sync" else ASYNC, mark)
    assert f["evidence"]["dependency"] == dependency
    assert f["evidence"]["created_in_requests"] >= 3
    assert obj in f["summary"]
    # Nothing else is rebuilt: the auth dependency and the session are necessary per-request work.
    assert [g for g in app.findings("dependency_rebuild") if g is not f and g["evidence"].get("object") != obj] == []


def test_a_sync_dependency_computing_the_same_result_in_every_request_is_a_rebuild(serve, tmp_path):
    # get_signing_key_per_request stretches the same secret with PBKDF2 on every request (the healthy
    # twin caches it with lru_cache): the thread's own CPU time, on the same inputs, again and again.
    app = start(serve, "fullstack_sync:app", f"sqlite:///{tmp_path / 'a.db'}", MISTAKE="signing_key_per_request")
    client = Client(app, sync=True)
    assert {r.status_code for r in client.get("/items/", n=5)} == {200}
    (f,) = wait_until(lambda: app.findings("dependency_rebuild"))
    assert f["route"] == "/api/v1/items/"
    assert at(f) == marked(SYNC, "signing key per request")
    assert f["evidence"]["computation"] == "get_signing_key_per_request"
    assert f["evidence"]["same_inputs"] >= 3 and f["evidence"]["cpu_ms"] > 25
    # The auth dependency's work (decode, load the user) is far below the limit: no finding.
    assert len(app.findings("dependency_rebuild")) == 1


# -- one finding on the cause ----------------------------------------------------------------------


def test_async_pool_too_small_for_the_load_is_one_pool_finding(serve, db):
    app = start(serve, "fullstack_async:app", db("async"), POOL_SIZE="2", MAX_OVERFLOW="0")
    client = Client(app, sync=False)
    statuses = client.load(["/users/me", "/articles"], concurrency=20, seconds=6)
    assert set(statuses) == {200}
    (f,) = wait_until(lambda: app.findings("pool_leak"), timeout=10)
    evidence = f["evidence"]
    assert evidence["reason"] == "pool_wait"
    assert evidence["pool_size"] == 2 and evidence["max_overflow"] == 0 and evidence["max_connections"] == 2
    assert evidence["demand"] > 2  # callers needing a connection at once, more than the pool allows
    assert "pool_size=2" in f["summary"] and "max_overflow=0" in f["summary"]
    holders = {h["location"] for h in evidence["holders"]}
    load_user = marked(ASYNC, "load user")
    assert f"fullstack_async.py:{load_user['line']} in get_current_user" in holders
    assert {h["route"] for h in evidence["holders"]} <= {"/api/users/me", "/api/articles"}
    # The dependencies that waited for a connection are symptoms, not findings of their own.
    assert app.findings("dependency_rebuild") == []
    assert len(app.findings("pool_leak")) == 1


def test_sync_endpoints_on_more_threads_than_connections_is_one_pool_finding(serve, db, request):
    app = start(serve, "fullstack_sync:app", db("sync"), POOL_SIZE="5", MAX_OVERFLOW="10")
    client = Client(app, sync=True)
    # Every request holds its session's connection while the database computes a report.
    statuses = client.load(["/users/me", "/items/summary"], concurrency=40, seconds=10)
    assert set(statuses) == {200}
    if request.node.callspec.params["db"] == "sqlite":
        # SQLite computes the report in the app's own threads: 15 of them on this machine's cores, the
        # CPU is where requests queue, and a larger pool would only add threads to that queue.
        time.sleep(1.5)  # the pool watchdog's rounds after the load
        assert app.findings("pool_leak") == []
        assert app.findings("dependency_rebuild") == []
        return
    found = wait_until(lambda: app.findings("pool_leak"), timeout=10)
    assert len(found) == 1, found
    evidence = found[0]["evidence"]
    assert evidence["reason"] == "pool_wait"
    assert evidence["pool_size"] == 5 and evidence["max_overflow"] == 10
    assert evidence["demand"] > 15
    assert app.findings("dependency_rebuild") == []
    assert worker_findings(app) == []  # a threadpool full of threads waiting for the pool is the pool's


def test_slow_upstream_in_a_sync_endpoint_is_one_threadpool_finding_on_its_line(serve, tmp_path):
    upstream = serve("slow_upstream:app")
    app = start(serve, "fullstack_sync:app", f"sqlite:///{tmp_path / 'a.db'}", MISTAKE="slow_upstream",
                UPSTREAM_URL=upstream.url + "/slow?seconds=1", FASTAPI_DOCTOR_THREADPOOL_WAIT_SECONDS="1")
    client = Client(app, sync=True)
    statuses = client.load(["/items/"], concurrency=50, seconds=8)
    assert set(statuses) == {200}
    found = wait_until(lambda: worker_findings(app), timeout=10)
    assert len(found) == 1, found
    (f,) = found
    assert f["route"] == "/api/v1/items/"
    assert at(f) == marked(SYNC, "slow upstream")
    assert app.findings("dependency_rebuild") == []
    assert app.findings("pool_leak") == []


def wrk_load(app: AppProcess, client: Client, paths: list[str], connections: int, seconds: int) -> int:
    """``connections`` clients in all, split over ``paths``, as the issue's `wrk -c32` load (one wrk per
    path; httpx threads where wrk is not installed). Requests answered with 200."""
    if not shutil.which("wrk"):
        statuses = client.load(paths, concurrency=connections, seconds=seconds)
        assert set(statuses) == {200}
        return len(statuses)
    return wrk_get([client.base + path for path in paths], client.headers, connections, seconds)


TRIAL_PATHS = ["/users/me", "/items/", "/utils/health-check/"]  # the template's trial: 11 clients each


def test_healthy_sync_app_under_32_clients_waits_for_the_cpu_not_for_its_pool(serve, postgres, pg_database):
    # 33 clients on a 2-core machine against sync routes and the default pool of 5 + 10: the threads that
    # hold a connection wait for the CPU (and the GIL), and a few callers wait for a connection behind
    # them. A larger pool would only add threads waiting for the same CPU: no finding.
    app = start(serve, "fullstack_sync:app", postgres.url(pg_database, driver="psycopg"), POOL_SIZE="5",
                MAX_OVERFLOW="10")
    client = Client(app, sync=True)
    assert wrk_load(app, client, TRIAL_PATHS, connections=33, seconds=10) > 500
    time.sleep(1.5)  # the pool watchdog's rounds after the load
    assert app.findings("pool_leak") == [], app.findings("pool_leak")
    assert app.findings("dependency_rebuild") == []


def test_a_pool_of_two_under_the_same_load_is_one_pool_finding(serve, postgres, pg_database):
    # The same load with pool_size=2, max_overflow=0: callers queue at the pool far longer than they hold a
    # connection (the rest of the process has CPU for them): the pool is the bottleneck.
    app = start(serve, "fullstack_sync:app", postgres.url(pg_database, driver="psycopg"), POOL_SIZE="2",
                MAX_OVERFLOW="0")
    client = Client(app, sync=True)
    wrk_load(app, client, TRIAL_PATHS, connections=33, seconds=8)
    (f,) = wait_until(lambda: app.findings("pool_leak"), timeout=10)
    evidence = f["evidence"]
    assert evidence["reason"] == "pool_wait" and evidence["max_connections"] == 2
    assert evidence["mean_waiting"] >= 2  # callers waited longer for a connection than they held one
    assert "pool_size=2" in f["summary"] and "max_overflow=0" in f["summary"]


def test_argon2_verified_in_an_async_login_route_is_blocking_io_at_the_users_line(serve, tmp_path):
    # The template's login route made `async def`: argon2 verifies the password on the event loop. Its
    # C library hashes in four lanes, each a thread of its own: the loop's thread sleeps in the call
    # while the process works. The loop was held by that call, not by other threads of the app, in
    # every episode (before, most of them were taken for another thread holding the interpreter).
    app = start(serve, "fullstack_sync:app", f"sqlite:///{tmp_path / 'a.db'}", MISTAKE="async_login",
                PASSWORD_HASHER="argon2", FASTAPI_DOCTOR_LOOP_BLOCK_MS="30")
    client = Client(app, sync=True)
    login = "/api/v1/login/access-token"
    done = threading.Event()

    def logins() -> None:  # one user signing in after another: one hash per block
        with httpx.Client(timeout=60) as http:
            while not done.is_set():
                response = http.post(app.url + login, data={"username": "user1@example.com", "password": "secret"})
                assert response.status_code == 200

    def reads() -> None:  # signed-in users meanwhile (sync routes, in the threadpool)
        while not done.is_set():
            client.get("/users/me", n=5)

    def blocked(**labels: str) -> float:
        return metric_value(app.metrics_text(), "fastapi_doctor_eventloop_blocked_total",
                            http_route="/api/v1/login/access-token", **labels) or 0.0

    clients = [threading.Thread(target=logins)] + [threading.Thread(target=reads) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: blocked() >= 8, timeout=30)
    finally:
        done.set()
        for t in clients:
            t.join()
    # The route also loads the user through the app's sync session on the loop: a fact of its own
    # (``sync_statement_on_loop``, at the query's line), not this block's.
    found = app.findings("blocking_io")
    (query,) = [f for f in found if f["evidence"].get("detected_by") == "sync_statement_on_loop"]
    assert (query["method"], query["route"]) == ("POST", login)
    assert at(query) == marked(APPS / "fullstack_sync.py", "async login query")
    (f,) = [f for f in found if f is not query]
    assert (f["method"], f["route"]) == ("POST", login)
    assert at(f) == marked(APPS / "fullstack_security.py", "argon2 verify")
    episodes, attributed = blocked(), blocked(root_cause="blocking_io")
    assert attributed >= 0.75 * episodes, (attributed, episodes)


# -- one leak, one finding -------------------------------------------------------------------------


def test_one_unclosed_session_is_one_leak_whatever_lines_it_passes_through(serve, tmp_path):
    # One module-level session serves every request and is never closed: its connection stays checked
    # out after each request, at the line that last took one (the login's query, then refreshing an
    # item after a commit returned the first).
    app = start(serve, "fullstack_sync:app", f"sqlite:///{tmp_path / 'a.db'}", MISTAKE="global_session",
                FASTAPI_DOCTOR_LEAK_SECONDS="1")
    client = Client(app, sync=True)
    (first,) = wait_until(lambda: app.findings("pool_leak"), timeout=10)
    assert first["evidence"]["reason"] == "request_finished"
    assert at(first) == marked(SYNC, "login query")
    with httpx.Client(headers=client.headers) as http:
        assert http.post(client.base + "/items/", json={"title": "new"}).status_code == 200
        assert http.get(client.base + "/items/").status_code == 200
    time.sleep(2.0)  # past the grace after the requests (0.5 s) and several watchdog rounds (0.25 s)
    assert [f["id"] for f in app.findings("pool_leak")] == [first["id"]]


def test_a_session_never_closed_by_the_dependency_of_three_routes_is_one_leak_at_its_line(serve, tmp_path):
    # The full-stack template's trial mistake: `get_db` returns a session it never closes. Every route's
    # connection is taken at one line, where the current-user dependency loads the user: one leak at that
    # line, naming the routes it leaked on (the trial gave one finding per route).
    app = start(serve, "fullstack_sync:app", f"sqlite:///{tmp_path / 'a.db'}", MISTAKE="session_leak",
                FASTAPI_DOCTOR_LEAK_SECONDS="2")
    client = Client(app, sync=True)
    for path in ("/users/me", "/items/", "/items/summary"):
        assert [r.status_code for r in client.get(path, n=2)] == [200, 200]
    where = marked(SYNC, "load user")

    def leaked_at_the_line() -> list[dict[str, Any]]:
        return [f for f in app.findings("pool_leak") if at(f) == where]

    wait_until(lambda: [f for f in leaked_at_the_line() if len(f["evidence"].get("routes", [])) == 3], timeout=15)
    (f,) = leaked_at_the_line()
    assert sorted(f["evidence"]["routes"]) == [
        "GET /api/v1/items/", "GET /api/v1/items/summary", "GET /api/v1/users/me"]
    assert "on 3 routes" in f["summary"]
    # The login's session leaks too, at its own line: another finding.
    assert {at(g)["line"] for g in app.findings("pool_leak")} <= {where["line"], marked(SYNC, "login query")["line"]}


# -- the pool rule, on a real pool and an explicit clock -------------------------------------------

SATURATION_SCRIPT = """
import json, sys, threading, time
import fastapi_doctor
from fastapi_doctor import _agent
fastapi_doctor.instrument(prometheus_port=0, pool_wait_seconds=2.0)
from sqlalchemy import create_engine, text
(signal,) = [s for s in _agent.get().signals if s.name == "db"]
signal.pools.stop()  # this test drives the rounds with its own clock
engine = create_engine(sys.argv[1], pool_size=1, max_overflow=0, pool_timeout=30)
held = engine.connect()
held.execute(text("SELECT 1"))
waiters = [threading.Thread(target=lambda: engine.connect().close()) for _ in range(2)]
for t in waiters:
    t.start()
while len(signal.pools.stats_for(engine.pool).pending) < 2:
    time.sleep(0.01)
findings = _agent.get().findings
def pool_findings():
    return [(f.evidence["reason"], f.count) for f in findings.all() if f.root_cause == "pool_leak"]
rounds = {}
for at in (100.0, 101.0, 101.9):
    signal.pools.check_saturation(at)
rounds["before_the_limit"] = pool_findings()
signal.pools.check_saturation(102.1)
rounds["at_the_limit"] = pool_findings()
signal.pools.check_saturation(103.0)
rounds["same_episode"] = pool_findings()
(f,) = [f for f in findings.all() if f.root_cause == "pool_leak"]
evidence = {k: f.evidence[k] for k in ("pool_size", "max_overflow", "max_connections", "demand", "waiting")}
held.close()
for t in waiters:
    t.join()
signal.pools.check_saturation(104.0)  # a round with nobody waiting ends the episode
findings.clear()
def saturate():
    held = engine.connect()
    waiter = threading.Thread(target=lambda: engine.connect().close())
    waiter.start()
    while len(signal.pools.stats_for(engine.pool).pending) < 1:
        time.sleep(0.01)
    return held, waiter
def release(held, waiter):
    held.close()
    waiter.join()
pair = saturate()
signal.pools.check_saturation(105.0)
release(*pair)
signal.pools.check_saturation(106.0)  # a round with nobody waiting: the episode ends
pair = saturate()
signal.pools.check_saturation(107.5)  # 2.5 s after the first saturated round, 1.5 s into this episode
rounds["with_a_break"] = pool_findings()
signal.pools.check_saturation(109.6)  # 2.1 s into this episode: a new one, reported
rounds["next_episode"] = pool_findings()
release(*pair)
print(json.dumps({"rounds": rounds, "evidence": evidence}))
"""


def test_pool_wait_is_one_finding_per_episode_of_rounds_all_saturated(tmp_path):
    import json
    import subprocess

    from harness import BIN

    result = subprocess.run([str(BIN / "python"), "-c", SATURATION_SCRIPT, f"sqlite:///{tmp_path / 'p.db'}"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rounds"] == {
        "before_the_limit": [],
        "at_the_limit": [["pool_wait", 1]],
        "same_episode": [["pool_wait", 1]],
        "with_a_break": [],
        "next_episode": [["pool_wait", 1]],
    }
    assert report["evidence"] == {"pool_size": 1, "max_overflow": 0, "max_connections": 1, "demand": 3, "waiting": 2}
