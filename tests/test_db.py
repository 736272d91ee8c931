"""The db signal through real servers and real databases (SQLite file with aiosqlite, PostgreSQL with
asyncpg): pool metrics against the pool's own state, leaks with their checkout line, exhaustion, the
healthy twin with no finding, N+1, engines per request, and the undo of every patch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import APPS, BIN, concurrent_get, metric_value, wait_until
from pg import PASSWORD

APP = APPS / "db_app.py"


def marked_line(marker: str, path: Path = APP) -> int:
    """The line of ``path`` carrying ``# mark: <marker>`` (so tests do not hard-code line numbers)."""
    lines = [n for n, text in enumerate(path.read_text().splitlines(), 1) if text.rstrip().endswith(f"# mark: {marker}")]
    assert len(lines) == 1, marker
    return lines[0]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The app's database URL and the pool name the agent must give it (no credentials)."""
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        return {"url": f"sqlite+aiosqlite:///{path}", "pool": f"sqlite:///{path}"}
    postgres = request.getfixturevalue("postgres")
    name = request.getfixturevalue("pg_database")
    return {"url": postgres.url(name), "pool": f"postgresql://127.0.0.1:{postgres.port}/{name}"}


def db_env(database: dict[str, str], **extra: str) -> dict[str, str]:
    return {"DB_URL": database["url"], **extra}


def labels_of(text: str, name: str) -> list[dict[str, str]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_")}
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metrics_when(app: Any, predicate: Any, timeout: float = 15) -> str:
    """The /metrics page once ``predicate(text)`` holds."""

    def check() -> str | None:
        text = app.metrics_text()
        return text if predicate(text) else None

    return wait_until(check, timeout=timeout)


def finding(app: Any, root_cause: str, **match: Any) -> dict[str, Any] | None:
    """The finding of ``root_cause`` whose fields (or evidence fields) match."""
    for f in app.findings(root_cause):
        if all(f.get(k, f["evidence"].get(k)) == v for k, v in match.items()):
            return f
    return None


def test_pool_metrics_follow_the_pool_under_concurrent_load(serve, database):
    app = serve("db_app:app", env=db_env(database, POOL_SIZE="3", MAX_OVERFLOW="2", FASTAPI_DOCTOR_LEAK_SECONDS="120"))
    pool = {"db_client_connection_pool_name": database["pool"]}
    with ThreadPoolExecutor(8) as clients:
        held = [clients.submit(httpx.get, app.url + "/hold", timeout=60) for _ in range(8)]
        try:
            # 3 + 2 overflow connections are held; the other 3 requests wait in the pool.
            text = metrics_when(
                app,
                lambda t: metric_value(t, "db_client_connection_count", db_client_connection_state="used", **pool) == 5
                and metric_value(t, "db_client_connection_pending_requests", **pool) == 3,
                timeout=30,
            )
        except BaseException:
            httpx.post(app.url + "/gate/open")
            raise
        real = httpx.get(app.url + "/pool").json()
        assert real == {"checkedout": 5, "checkedin": 0, "overflow": 2, "size": 3}
        assert metric_value(text, "db_client_connection_count", db_client_connection_state="idle", **pool) == real["checkedin"]
        assert metric_value(text, "fastapi_doctor_db_pool_overflow", **pool) == real["overflow"]
        assert metric_value(text, "db_client_connection_max", **pool) == 5
        assert metric_value(text, "db_client_connection_idle_max", **pool) == 3
        # Exact attribute sets: the pool name (and the state for the count), nothing else.
        assert sorted(map(sorted, labels_of(text, "db_client_connection_count"))) == [
            ["db_client_connection_pool_name", "db_client_connection_state"]
        ] * 2
        for name in ("db_client_connection_max", "db_client_connection_pending_requests", "fastapi_doctor_db_pool_overflow"):
            assert labels_of(text, name) == [pool], name
        time.sleep(0.3)  # the waiters wait at least this long
        httpx.post(app.url + "/gate/open")
        assert [r.status_code for r in (f.result() for f in held)] == [200] * 8

    text = metrics_when(
        app,
        lambda t: metric_value(t, "db_client_connection_count", db_client_connection_state="used", **pool) == 0
        and metric_value(t, "db_client_connection_use_time_seconds_count", **pool) == 9,
    )
    real = httpx.get(app.url + "/pool").json()
    assert real == {"checkedout": 0, "checkedin": 3, "overflow": 0, "size": 3}
    assert metric_value(text, "db_client_connection_count", db_client_connection_state="idle", **pool) == 3
    assert metric_value(text, "db_client_connection_pending_requests", **pool) == 0
    assert metric_value(text, "fastapi_doctor_db_pool_overflow", **pool) == 0
    # Nine checkouts (start-up and eight requests) over five connections ever opened.
    assert metric_value(text, "db_client_connection_wait_time_seconds_count", **pool) == 9
    assert metric_value(text, "db_client_connection_create_time_seconds_count", **pool) == 5
    # The three waiters waited, the five first holders held, past the pause above.
    assert metric_value(text, "db_client_connection_wait_time_seconds_bucket", le="0.25", **pool) <= 6
    assert metric_value(text, "db_client_connection_use_time_seconds_bucket", le="0.25", **pool) <= 4
    assert metric_value(text, "db_client_connection_timeouts_total", **pool) is None
    assert app.findings("pool_leak") == []
    assert PASSWORD not in text and PASSWORD not in json.dumps(app.doctor())


def test_leaks_are_found_with_their_checkout_line(serve, database, tmp_path):
    # Leak after 2 s; left behind 1 s after its request finished.
    env = db_env(database, POOL_SIZE="2", MAX_OVERFLOW="0", POOL_TIMEOUT="0.5", FASTAPI_DOCTOR_LEAK_SECONDS="2")
    app = serve("db_app:app", env=env)

    # Held longer than FASTAPI_DOCTOR_LEAK_SECONDS, while its request still runs.
    with ThreadPoolExecutor(1) as client:
        held = client.submit(httpx.get, app.url + "/hold", timeout=60)
        try:
            f = wait_until(lambda: finding(app, "pool_leak", route="/hold"), timeout=15)
        finally:
            httpx.post(app.url + "/gate/open")
        assert held.result().status_code == 200
    assert f["evidence"]["reason"] == "held_too_long" and f["evidence"]["age_s"] > 2
    assert f["location"] == {"file": "db_app.py", "line": marked_line("hold"), "function": "hold"}
    assert f["evidence"]["pool"] == database["pool"]

    # Still checked out after its request finished (a session never closed, kept alive).
    assert httpx.get(app.url + "/leak").status_code == 200
    f = wait_until(lambda: finding(app, "pool_leak", route="/leak"), timeout=15)
    assert f["evidence"]["reason"] == "request_finished"
    assert f["location"] == {"file": "db_app.py", "line": marked_line("leak"), "function": "leak"}
    assert f["evidence"]["checked_out"] == 1 and f["evidence"]["pool_size"] == 2

    # Returned by the garbage collector (a session never closed, dropped).
    assert httpx.get(app.url + "/unclosed").status_code == 200
    httpx.post(app.url + "/gc")
    f = wait_until(lambda: finding(app, "pool_leak", route="/unclosed"), timeout=15)
    assert f["evidence"]["reason"] == "garbage_collected"
    assert f["location"] == {"file": "db_app.py", "line": marked_line("unclosed"), "function": "unclosed"}

    # A second leak exhausts the pool: the next checkout times out; the finding names the holders.
    assert httpx.get(app.url + "/leak").status_code == 200
    assert httpx.get(app.url + "/items/1").status_code == 500
    f = wait_until(lambda: finding(app, "pool_leak", reason="pool_exhausted"), timeout=15)
    assert f["route"] == "/items/{item_id}"
    assert f["location"]["file"] == "db_app.py" and f["location"]["function"] == "item"
    (holder,) = f["evidence"]["holders"]
    assert holder["route"] == "/leak" and holder["connections"] == 2
    assert holder["location"] == f"db_app.py:{marked_line('leak')} in leak"
    assert "/leak x2" in f["summary"]
    text = app.metrics_text()
    pool = {"db_client_connection_pool_name": database["pool"]}
    assert metric_value(text, "db_client_connection_timeouts_total", **pool) == 1
    assert metric_value(text, "db_client_connection_count", db_client_connection_state="used", **pool) == 2
    assert metric_value(text, "fastapi_doctor_findings_total", root_cause="pool_leak", http_route="/leak") >= 1
    assert PASSWORD not in text and PASSWORD not in json.dumps(app.doctor())


def test_sync_session_returned_by_the_garbage_collector(serve, tmp_path):
    env = {"DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", "SYNC_DB_URL": f"sqlite:///{tmp_path / 's.db'}"}
    app = serve("db_app:app", env=env)
    assert httpx.get(app.url + "/sync/unclosed").status_code == 200
    httpx.post(app.url + "/gc")
    f = wait_until(lambda: finding(app, "pool_leak", route="/sync/unclosed"), timeout=15)
    assert f["evidence"]["reason"] == "garbage_collected"
    assert f["evidence"]["pool"] == f"sqlite:///{tmp_path / 's.db'}"
    assert f["location"] == {"file": "db_app.py", "line": marked_line("sync-unclosed"), "function": "sync_unclosed"}


def test_async_with_session_dependency_under_load_has_no_finding(serve, database):
    # A pool sized for the load (8 clients, 8 connections): a smaller one is a pool finding (pool_wait).
    env = db_env(database, POOL_SIZE="8", MAX_OVERFLOW="0", POOL_TIMEOUT="20", FASTAPI_DOCTOR_LEAK_SECONDS="5")
    app = serve("db_app:app", env=env)
    responses = concurrent_get(app.url + "/items/7", 60, concurrency=8)
    responses += concurrent_get(app.url + "/one_query?n=5", 20, concurrency=8)
    assert {r.status_code for r in responses} == {200}
    pool = {"db_client_connection_pool_name": database["pool"]}
    text = metrics_when(app, lambda t: metric_value(t, "db_client_connection_use_time_seconds_count", **pool) == 81)
    assert metric_value(text, "db_client_connection_count", db_client_connection_state="used", **pool) == 0
    assert metric_value(text, "db_client_connection_timeouts_total", **pool) is None
    # Past the grace after the last request (0.5 s here) and several watchdog rounds: still nothing.
    time.sleep(2.0)
    assert app.findings() == []


def test_n_plus_one_loop_found_one_in_query_not(serve, postgres, pg_database):
    app = serve("db_app:app", env={"DB_URL": postgres.url(pg_database)})
    assert len(httpx.get(app.url + "/n_plus_one?n=9").json()) == 9  # below the threshold of 10
    assert len(httpx.get(app.url + "/one_query?n=15").json()) == 15
    assert app.findings("n_plus_one") == []
    assert len(httpx.get(app.url + "/n_plus_one?n=12").json()) == 12
    f = wait_until(lambda: app.findings("n_plus_one"))
    assert len(f) == 1
    f = f[0]
    assert f["route"] == "/n_plus_one"
    assert f["location"] == {"file": "db_app.py", "line": marked_line("n+1"), "function": "n_plus_one"}
    assert f["evidence"]["fingerprint"] == "SELECT name FROM items WHERE id = ?"
    assert f["evidence"]["executions"] == 12 and f["evidence"]["threshold"] == 10

    text = app.metrics_text()
    assert metric_value(text, "fastapi_doctor_db_statements_count", http_route="/n_plus_one") == 2
    assert metric_value(text, "fastapi_doctor_db_statements_sum", http_route="/n_plus_one") == 21
    assert metric_value(text, "fastapi_doctor_db_statements_sum", http_route="/one_query") == 1
    assert labels_of(text, "fastapi_doctor_db_statements_count") == [{"http_route": "/n_plus_one"}, {"http_route": "/one_query"}]


def test_engine_created_per_request_is_a_dependency_rebuild(serve, tmp_path):
    app = serve("db_app:app", env={"DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"})
    for _ in range(2):
        assert httpx.get(app.url + "/engine_per_request").json() == {"value": 1}
    assert app.findings("dependency_rebuild") == []  # twice may be chance; a third time is per request
    assert httpx.get(app.url + "/engine_per_request").json() == {"value": 1}
    (f,) = wait_until(lambda: app.findings("dependency_rebuild"))
    assert f["route"] == "/engine_per_request" and f["count"] == 1
    assert f["location"] == {
        "file": "db_app.py",
        "line": marked_line("engine-per-request"),
        "function": "engine_per_request",
    }
    assert f["evidence"] == {"object": "sqlalchemy.engine.Engine", "created_in_requests": 3, "dependency": None,
                             "pool": f"sqlite:///{tmp_path / 'a.db'}"}


def test_engine_created_before_instrument_in_code_is_measured(serve, tmp_path):
    path = tmp_path / "s.db"
    app = serve("db_in_code:app", wrapper=False, env={"SYNC_DB_URL": f"sqlite:///{path}", "FASTAPI_DOCTOR_LEAK_SECONDS": "1"})
    assert httpx.get(app.url + "/query").json() == {"value": 42}
    pool = {"db_client_connection_pool_name": f"sqlite:///{path}"}
    text = app.metrics_text()
    assert metric_value(text, "db_client_connection_idle_max", **pool) == 2
    assert metric_value(text, "db_client_connection_count", db_client_connection_state="idle", **pool) == 1
    assert metric_value(text, "db_client_connection_wait_time_seconds_count", **pool) == 1
    assert httpx.get(app.url + "/leak").status_code == 200
    f = wait_until(lambda: finding(app, "pool_leak", route="/leak"), timeout=15)
    assert f["location"] == {"file": "db_in_code.py", "line": marked_line("in-code-leak", APPS / "db_in_code.py"),
                             "function": "leak"}


def test_prefork_worker_with_preloaded_app_reports_leaks(tmp_path):
    """gunicorn --preload: sqlalchemy and the engine load in the master; the worker needs its own watchdog."""
    from harness import AppProcess

    app = AppProcess("db_app:app", env={"DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
                                        "FASTAPI_DOCTOR_LEAK_SECONDS": "1"}, command=["-"])
    app.command = [str(BIN / "opentelemetry-instrument"), str(BIN / "gunicorn"), "db_app:app", "--preload", "-w", "1",
                   "-k", "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{app.port}"]
    app.start()
    try:
        assert httpx.get(app.url + "/leak").status_code == 200
        # The worker's finding, as logged (with --preload the side server stays the master's).
        line = f"fastapi-doctor finding [pool_leak] on GET /leak at db_app.py:{marked_line('leak')} in leak"
        wait_until(lambda: line in app.logs(), timeout=15)
        assert "after its request finished" in app.logs()
    finally:
        app.stop()


def _observable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.items() if k.lower() != "date"]
    return response.status_code, headers, response.content


def test_failures_inside_the_db_signal_never_change_the_response(serve, tmp_path):
    paths = ["/items/3", "/n_plus_one?n=12", "/one_query?n=4", "/engine_per_request", "/unclosed", "/leak"]
    bare = serve("db_app:app", wrapper=False, env={"DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'bare.db'}"})
    expected = {p: _observable(httpx.get(bare.url + p)) for p in paths}
    faulty = serve("db_faulty:app", env={"DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'faulty.db'}"})
    for p in paths:
        assert _observable(httpx.get(faulty.url + p)) == expected[p], p
    text = metrics_when(
        faulty,
        lambda t: all(
            metric_value(t, "fastapi_doctor_internal_errors_total", fastapi_doctor_component=c)
            for c in ("db checkout", "db checkin", "db statements", "db engine", "db pool")
        ),
    )
    logs = faulty.logs()
    assert logs.count("internal error in db checkout") == 1
    assert metric_value(text, "fastapi_doctor_internal_errors_total", fastapi_doctor_component="db statements") >= 12


def test_pool_name_has_no_credentials_or_query():
    from sqlalchemy import make_url

    from fastapi_doctor.signals.database.db_pool import pool_name

    assert pool_name(make_url("postgresql+asyncpg://u:pw@db.internal:6432/app?sslpassword=x")) == (
        "postgresql://db.internal:6432/app"
    )
    assert pool_name(make_url("mysql+pymysql://u:pw@db/shop")) == "mysql://db/shop"
    assert pool_name(make_url("sqlite+aiosqlite:////var/data/app.db")) == "sqlite:////var/data/app.db"
    assert pool_name(make_url("sqlite://")) == "sqlite://"


UNDO_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    import fastapi_doctor.signals.database.db
    imported_early = "sqlalchemy" in sys.modules

    import fastapi_doctor
    from fastapi_doctor import _agent
    from sqlalchemy import create_engine, event, text
    from sqlalchemy.engine import Dialect
    from sqlalchemy.engine.default import DefaultDialect
    from sqlalchemy.pool import Pool, SingletonThreadPool
    EXECUTES = ("do_execute", "do_execute_no_params", "do_executemany")

    originals = {
        "Pool.connect": Pool.__dict__["connect"],
        "SingletonThreadPool.connect": SingletonThreadPool.__dict__["connect"],
        "Dialect.engine_created": Dialect.__dict__["engine_created"],
        **{f"DefaultDialect.{name}": DefaultDialect.__dict__[name] for name in EXECUTES},
    }
    def patched():
        current = {
            "Pool.connect": Pool.__dict__["connect"],
            "SingletonThreadPool.connect": SingletonThreadPool.__dict__["connect"],
            "Dialect.engine_created": Dialect.__dict__["engine_created"],
            **{f"DefaultDialect.{name}": DefaultDialect.__dict__[name] for name in EXECUTES},
        }
        return sorted(k for k in originals if current[k] is not originals[k])

    fastapi_doctor.instrument(prometheus_port=0)
    import sqlalchemy.orm  # the ORM's session listener comes with it
    agent = _agent.get()
    (signal,) = [s for s in agent.signals if s.name == "db"]
    listeners = [(Pool, "connect", signal._on_connect), (Pool, "checkout", signal._on_checkout),
                 (Pool, "checkin", signal._on_checkin), (Pool, "detach", signal._on_detach),
                 (sqlalchemy.orm.Session, "after_begin", signal._after_begin)]
    engine = create_engine(sys.argv[1])
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    during = {
        "patched": patched(),
        "listening": sum(event.contains(t, n, f) for t, n, f in listeners),
        "watchdog": any(t.name == "fastapi-doctor-db-watchdog" for t in threading.enumerate()),
        "hooked": signal.queries.finished in agent.request_metrics.finished_hooks,
        "known_pools": len(signal.pools.live_pools()),
    }
    hooks = agent.request_metrics.finished_hooks
    fastapi_doctor.uninstrument()
    conn = engine.connect()  # after the undo nothing is tracked
    after = {
        "patched": patched(),
        "listening": sum(event.contains(t, n, f) for t, n, f in listeners),
        "watchdog": any(t.name == "fastapi-doctor-db-watchdog" for t in threading.enumerate()),
        "hooked": signal.queries.finished in hooks,
        "tracked": len(signal.pools.out),
    }
    conn.close()
    print(json.dumps({"imported_early": imported_early, "during": during, "after": after}))
    """
)


def test_uninstrument_removes_every_listener_and_patch(tmp_path):
    result = subprocess.run(
        [str(BIN / "python"), "-c", UNDO_SCRIPT, f"sqlite:///{tmp_path / 'u.db'}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Importing the signal imports no app library.
    assert report["imported_early"] is False
    assert report["during"] == {
        "patched": ["DefaultDialect.do_execute", "DefaultDialect.do_execute_no_params",
                    "DefaultDialect.do_executemany", "Dialect.engine_created", "Pool.connect",
                    "SingletonThreadPool.connect"],
        "listening": 5,
        "watchdog": True,
        "hooked": True,
        "known_pools": 1,
    }
    assert report["after"] == {"patched": [], "listening": 0, "watchdog": False, "hooked": False, "tracked": 0}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


ENGINE_KEYWORDS_SCRIPT = """
import asyncio, json
import fastapi_doctor
from fastapi import FastAPI
fastapi_doctor.instrument(FastAPI(), prometheus_port=0)
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
sync = create_engine("sqlite://", echo=True, hide_parameters=True, logging_name="app", query_cache_size=10)
with sync.connect() as conn:
    one = conn.execute(text("select 1")).scalar()
engine = create_async_engine("sqlite+aiosqlite://", echo=False, pool_pre_ping=True)
async def main():
    async with engine.connect() as conn:
        return (await conn.execute(text("select 2"))).scalar()
two = asyncio.run(main())
print(json.dumps({"echo": sync.echo, "hide": sync.hide_parameters, "one": one, "two": two}))
"""


def test_engines_take_every_keyword_they_take_without_the_agent() -> None:
    # create_engine reads the keywords Engine accepts from its constructor's signature: a published app
    # (create_async_engine(url, echo=True)) did not start under the agent.
    out = subprocess.run([str(BIN / "python"), "-c", ENGINE_KEYWORDS_SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"echo": True, "hide": True, "one": 1, "two": 2}


def test_an_engine_per_request_in_a_dependency_of_three_routes_is_one_finding_at_its_line(serve, tmp_path):
    # One mistake, one finding: the same creation line rebuilt on three routes (the grillazz trial gave one
    # finding per route), with the routes that pay for it in its evidence.
    app = serve("engine_per_request_router:app", env={"DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"})
    for _ in range(2):
        assert httpx.get(app.url + "/api/v1/stuff/").json() == ["one", "two"]
        assert httpx.get(app.url + "/api/v1/stuff/2").json() == {"name": "two"}
        assert httpx.post(app.url + "/api/v1/stuff/").json() == {"count": 2}
    source = APPS / "engine_per_request_router.py"
    where = {"file": source.name, "line": marked_line("engine-per-request", source), "function": "get_db"}
    wait_until(lambda: [f for f in app.findings("dependency_rebuild") if f["evidence"]["created_in_requests"] == 6])
    (f,) = app.findings("dependency_rebuild")
    assert f["location"] == where
    assert f["evidence"]["object"] == "sqlalchemy.engine.Engine"
    assert sorted(f["evidence"]["routes"]) == ["GET /api/v1/stuff/", "GET /api/v1/stuff/{stuff_id}",
                                               "POST /api/v1/stuff/"]


def test_a_short_sync_query_in_an_async_route_is_blocking_io_at_its_line_by_fact(tmp_path):
    """The app's sync engine used from an async route: each query is ~1 ms, far below the loop
    watchdog's threshold, and still a blocking call on the loop. Found by the fact (a statement sent
    through a sync dialect on the loop's thread inside a request), not by its length; the sync def twin
    (threadpool), the async engine twin and the start-up work on the loop are not findings."""
    from harness import AppProcess

    app = AppProcess("sync_engine_router:app", env={"DB_PATH": str(tmp_path / "notes.db")}).start()
    try:
        for path in ("/notes/1/sync", "/notes/2/async", "/notes/3/sync", "/notes/4/async"):
            assert httpx.get(app.url + path).status_code == 200
        for note in range(1, 4):
            assert httpx.get(app.url + f"/notes/{note}").status_code == 200

        [finding] = wait_until(lambda: app.findings("blocking_io"), timeout=10)
        line = marked_line("sync query on the loop", APPS / "sync_engine_router.py")
        assert (finding["method"], finding["route"]) == ("GET", "/notes/{note_id}"), finding
        assert finding["location"]["file"].endswith("sync_engine_router.py"), finding
        assert finding["location"]["line"] == line, finding
        assert finding["evidence"]["detected_by"] == "sync_statement_on_loop", finding
        assert "conn.execute" in finding["evidence"]["call"], finding
    finally:
        app.stop()
