"""The asyncpg signal through a real server and a real PostgreSQL, on a raw-asyncpg app (no ORM): N+1
with the loop's line, leaks with their acquire line, exhaustion naming the pool's size and holders,
pools and connections made per request, the healthy twins with no finding, and the undo."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import APPS, BIN, concurrent_get, metric_value, wait_until, wrk_get
from pg import PASSWORD, USER
from test_db import finding, labels_of, marked_line, metrics_when

APP = APPS / "asyncpg_app.py"
EMAIL, SECRET_WORD = "reader@example.com", "correct horse"


@pytest.fixture
def database(postgres: Any, pg_database: str) -> dict[str, str]:
    return {
        "dsn": f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{postgres.port}/{pg_database}",
        "pool": f"postgresql://127.0.0.1:{postgres.port}/{pg_database}",
    }


def start(serve: Any, database: dict[str, str], **env: str) -> Any:
    return serve("asyncpg_app:app", env={"PG_DSN": database["dsn"], **env})


def login(app: Any) -> dict[str, str]:
    response = httpx.post(app.url + "/api/auth/token", json={"email": EMAIL, "password": SECRET_WORD})
    response.raise_for_status()
    return {"Authorization": "Bearer " + response.json()["access_token"]}


def database_findings(app: Any) -> list[dict[str, Any]]:
    """Findings about the database: pools, statements, pools or connections made per request (the auth
    dependency's time under a loaded two-core machine is the dependencies signal's matter, not tested here)."""
    return [f for f in app.findings() if f["root_cause"] in ("pool_leak", "n_plus_one") or "object" in f["evidence"]]


def mark(name: str) -> dict[str, Any]:
    """The location of the line marked ``name`` in the app."""
    line = marked_line(name, APP)
    function = {"n+1": "list_articles", "leak": "leaky", "hold": "slow", "pool-per-request": "fresh_pool",
                "connect-per-request": "fresh_connection", "databases-per-request": "fresh_database",
                "databases-n+1": "article_authors", "leaky dependency": "leaky_connection"}[name]
    return {"file": "asyncpg_app.py", "line": line, "function": function}


def test_one_query_per_listed_article_is_an_n_plus_one_at_the_loop(serve, database):
    app = start(serve, database)
    auth = login(app)
    assert len(httpx.get(app.url + "/api/articles/?limit=9", headers=auth).json()) == 9  # below 10 per statement
    feed = httpx.get(app.url + "/api/articles/feed?limit=20", headers=auth).json()
    assert len(feed) == 20 and feed[0]["tags"] == ["python", "sql"]
    assert app.findings("n_plus_one") == []

    page = httpx.get(app.url + "/api/articles/?limit=12", headers=auth).json()
    assert [a["comments"] for a in page] == [1] * 12
    (f,) = wait_until(lambda: app.findings("n_plus_one"))
    assert f["route"] == "/api/articles/"
    # Four statements run 12 times each, all from the loop in the endpoint (not the repository's lines).
    assert f["location"] == mark("n+1")
    assert f["evidence"]["executions"] == 12 and f["evidence"]["threshold"] == 10
    assert f["evidence"]["fingerprint"] in {
        "SELECT name FROM authors WHERE id = ?",
        "SELECT tag FROM tags WHERE article_id = ? ORDER BY tag",
        "SELECT count(*) FROM comments WHERE article_id = ?",
        "SELECT EXISTS (SELECT ? FROM favorites WHERE article_id = ? AND user_id = ?)",
    }
    # The request's statements: the page query, four per article; the user's own statement in the dependency.
    assert f["evidence"]["statements_in_request"] == 1 + 4 * 12 + 1
    text = app.metrics_text()
    assert metric_value(text, "fastapi_doctor_db_statements_sum", http_route="/api/articles/") == (1 + 4 * 9 + 1) + 50
    assert metric_value(text, "fastapi_doctor_db_statements_sum", http_route="/api/articles/feed") == 2
    assert metric_value(text, "fastapi_doctor_db_statements_count", http_route="/api/auth/token") == 1
    assert PASSWORD not in text and PASSWORD not in json.dumps(app.doctor())


def test_one_query_per_row_through_databases_is_an_n_plus_one(serve, database):
    app = start(serve, database)
    assert len(httpx.get(app.url + "/api/articles/authors?limit=9").json()) == 9
    assert app.findings("n_plus_one") == []
    assert len(httpx.get(app.url + "/api/articles/authors?limit=15").json()) == 15
    (f,) = wait_until(lambda: app.findings("n_plus_one"))
    assert f["route"] == "/api/articles/authors" and f["location"] == mark("databases-n+1")
    assert f["evidence"]["fingerprint"] == "SELECT name FROM authors WHERE id = ?"
    assert f["evidence"]["executions"] == 15 and f["evidence"]["statements_in_request"] == 16


def test_connection_never_released_is_a_leak_at_its_acquire_line(serve, database):
    app = start(serve, database, FASTAPI_DOCTOR_LEAK_SECONDS="2")
    auth = login(app)
    pool = {"db_client_connection_pool_name": database["pool"]}
    # The healthy twin: acquired and released, under concurrent load.
    assert {r.status_code for r in concurrent_get(app.url + "/api/reports/count", 40, headers=auth)} == {200}
    # Acquires: start-up, the login, and the auth dependency's and the route's per request.
    text = metrics_when(app, lambda t: metric_value(t, "db_client_connection_use_time_seconds_count", **pool) == 82)
    assert metric_value(text, "db_client_connection_count", db_client_connection_state="used", **pool) == 0
    assert metric_value(text, "db_client_connection_wait_time_seconds_count", **pool) == 82
    # One name for the database's two pools (the app's, max 5, and the one under `databases`, max 3).
    real = httpx.get(app.url + "/pool").json()
    assert metric_value(text, "db_client_connection_max", **pool) == real["max"] == 8
    assert metric_value(text, "db_client_connection_count", db_client_connection_state="idle", **pool) == real["idle"]
    assert metric_value(text, "db_client_connection_create_time_seconds_count", **pool) == real["size"]
    assert sorted(map(sorted, labels_of(text, "db_client_connection_count"))) == [
        ["db_client_connection_pool_name", "db_client_connection_state"]
    ] * 2
    assert labels_of(text, "db_client_connection_max") == [pool]

    assert httpx.get(app.url + "/api/reports/leaky", headers=auth).json() == {"articles": 20}
    f = wait_until(lambda: finding(app, "pool_leak", route="/api/reports/leaky"), timeout=15)
    assert f["evidence"]["reason"] == "request_finished"
    assert f["location"] == mark("leak")
    assert f["evidence"]["pool"] == database["pool"]
    assert f["evidence"]["checked_out"] == 1 and f["evidence"]["max_connections"] == 5  # this pool's
    text = app.metrics_text()
    assert metric_value(text, "db_client_connection_count", db_client_connection_state="used", **pool) == 1
    # Only the leak: the healthy route and the auth dependency's statements have no finding.
    assert [x["route"] for x in database_findings(app)] == ["/api/reports/leaky"]
    assert PASSWORD not in text and PASSWORD not in json.dumps(app.doctor())


def test_a_connection_never_released_by_the_dependency_of_three_routes_is_one_leak_at_its_line(serve, database):
    # The realworld trial's mistake: the connection dependency acquires and never releases. One line leaks
    # on every route that uses it: one finding there, naming the routes (the trial gave one per route).
    app = start(serve, database, FASTAPI_DOCTOR_LEAK_SECONDS="2")
    assert httpx.get(app.url + "/api/tags/").json() == ["python", "sql"]
    assert httpx.get(app.url + "/api/tags/python").json() == {"articles": 20}
    assert httpx.post(app.url + "/api/tags/sql/views").json() == {"views": 20}
    wait_until(lambda: [f for f in app.findings("pool_leak") if len(f["evidence"].get("routes", [])) == 3], timeout=15)
    (f,) = app.findings("pool_leak")
    assert f["location"] == mark("leaky dependency")
    assert f["evidence"]["reason"] == "request_finished"
    assert sorted(f["evidence"]["routes"]) == ["GET /api/tags/", "GET /api/tags/{tag}", "POST /api/tags/{tag}/views"]
    assert "on 3 routes" in f["summary"]


def test_a_pool_exhausted_by_a_leak_is_the_leaks_one_finding(serve, database):
    # Every connection of the pool (5) leaked by the dependency, then callers wait for one without end
    # (the realworld trial's load stalls): the exhausted pool is the leak's symptom, not a second finding.
    app = start(serve, database, FASTAPI_DOCTOR_LEAK_SECONDS="2", FASTAPI_DOCTOR_POOL_WAIT_SECONDS="1")
    pool = {"db_client_connection_pool_name": database["pool"]}
    for _ in range(5):
        assert httpx.get(app.url + "/api/tags/").status_code == 200
    wait_until(lambda: finding(app, "pool_leak", reason="request_finished", count=5), timeout=15)
    with ThreadPoolExecutor(8) as clients:
        stuck = [clients.submit(httpx.get, app.url + "/api/tags/python", timeout=6) for _ in range(8)]
        metrics_when(app, lambda t: (metric_value(t, "db_client_connection_pending_requests", **pool) or 0) >= 8)
        time.sleep(2.5)  # the pool full with callers waiting for longer than FASTAPI_DOCTOR_POOL_WAIT_SECONDS
        assert [f["evidence"]["reason"] for f in app.findings("pool_leak")] == ["request_finished"], [
            (f["evidence"]["reason"], f["summary"]) for f in app.findings("pool_leak")]
        for call in stuck:
            with pytest.raises(httpx.ReadTimeout):
                call.result()


def load(app: Any, path: str, clients: int, headers: dict[str, str]) -> list[int]:
    with ThreadPoolExecutor(clients) as pool:
        return [r.status_code for r in pool.map(lambda _: httpx.get(app.url + path, headers=headers, timeout=30),
                                                range(clients))]


def test_small_pool_under_load_is_exhausted_a_sized_one_is_not(serve, database):
    app = start(serve, database, POOL_MAX="2", HOLD_S="0.3")
    auth = login(app)
    pool = {"db_client_connection_pool_name": database["pool"]}
    with ThreadPoolExecutor(1) as background:
        statuses = background.submit(load, app, "/api/reports/slow", 20, auth)
        metrics_when(app, lambda t: (metric_value(t, "db_client_connection_pending_requests", **pool) or 0) >= 5)
        assert statuses.result() == [200] * 20
    f = wait_until(lambda: finding(app, "pool_leak", reason="pool_exhausted"), timeout=15)
    assert f["evidence"]["pool"] == database["pool"] and f["evidence"]["max_connections"] == 2
    assert f["evidence"]["waits_on_full_pool"] * 2 >= f["evidence"]["acquires"] >= 20
    assert f["evidence"]["checked_out"] <= 2
    holders = {h["location"]: h for h in f["evidence"]["holders"]}
    hold = mark("hold")
    assert f"{hold['file']}:{hold['line']} in {hold['function']}" in holders
    assert "(max 2 connections)" in f["summary"] and "/api/reports/slow" in f["summary"]

    # The same load on a pool sized for it: no connection waits on a full pool.
    sized = start(serve, database, POOL_MAX="25", HOLD_S="0.3")
    auth = login(sized)
    assert load(sized, "/api/reports/slow", 20, auth) == [200] * 20
    assert load(sized, "/api/reports/slow", 20, auth) == [200] * 20
    # Acquires: start-up, the login, and the auth dependency's and the route's per request.
    text = metrics_when(sized, lambda t: metric_value(t, "db_client_connection_wait_time_seconds_count", **pool) == 82)
    assert metric_value(text, "db_client_connection_max", **pool) == 25 + 3
    assert database_findings(sized) == []


def waited_on_the_pool(text: str, pool: dict[str, str]) -> tuple[float, float]:
    """(acquires that waited 5 ms or more, acquires) so far, from the pool's wait-time histogram."""
    count = metric_value(text, "db_client_connection_wait_time_seconds_count", **pool) or 0.0
    quick = metric_value(text, "db_client_connection_wait_time_seconds_bucket", le="0.005", **pool) or 0.0
    return count - quick, count


def test_a_pool_full_behind_a_busy_event_loop_is_not_exhausted_one_starved_beside_an_idle_loop_is(serve, database):
    # The realworld trial's shape: a `yield` dependency holds a connection for the whole request, on one
    # event loop, under 32 clients on 2 cores. When the request's own work keeps the loop busy, every
    # connection is in use and callers wait, but the queue is at the loop (a holder's query result waits
    # for it): a larger pool would add holders waiting for the same loop. No finding.
    assert shutil.which("wrk"), "wrk is needed (.ci/run installs it)"
    app = start(serve, database, POOL_MAX="3", HOLD_S="0.05")
    auth = login(app)
    pool = {"db_client_connection_pool_name": database["pool"]}
    assert wrk_get([app.url + "/api/articles/digest"], auth, connections=32, seconds=8) > 100
    waited, acquires = waited_on_the_pool(app.metrics_text(), pool)
    assert 2 * waited >= acquires > 200  # the pool was full: most acquires waited for a connection
    assert app.findings("pool_leak") == [], [f["evidence"] for f in app.findings("pool_leak")]

    # The same pool and load where the holders await something slow (the loop idle while callers wait):
    # the pool is where requests queue.
    wrk_get([app.url + "/api/reports/slow"], auth, connections=32, seconds=5)
    f = wait_until(lambda: finding(app, "pool_leak", reason="pool_exhausted"), timeout=10)
    assert f["evidence"]["max_connections"] == 3 and f["route"] == "/api/reports/slow"
    assert f["evidence"]["loop_busy"] < 0.5


def test_pool_or_connection_per_request_is_a_rebuild(serve, database):
    app = start(serve, database)
    for path in ("/api/search/shared", "/api/search/lazy"):
        for _ in range(4):
            assert httpx.get(app.url + path).json()["articles"] == 20
    for path in ("/api/search/fresh-pool", "/api/search/fresh-connection", "/api/search/fresh-database"):
        for _ in range(2):
            assert httpx.get(app.url + path).json() == {"articles": 20}
    assert database_findings(app) == []  # twice may be lazy start-up work

    for path in ("/api/search/fresh-pool", "/api/search/fresh-connection", "/api/search/fresh-database"):
        assert httpx.get(app.url + path).json() == {"articles": 20}
    found = {f["route"]: f for f in app.findings("dependency_rebuild")}
    assert sorted(found) == ["/api/search/fresh-connection", "/api/search/fresh-database", "/api/search/fresh-pool"]
    for route, marker, made in (
        ("/api/search/fresh-pool", "pool-per-request", "asyncpg.Pool"),
        ("/api/search/fresh-connection", "connect-per-request", "asyncpg.Connection"),
        ("/api/search/fresh-database", "databases-per-request", "databases.Database"),
    ):
        f = found[route]
        assert f["location"] == mark(marker), route
        assert f["evidence"] == {"object": made, "created_in_requests": 3, "dependency": None}
    assert len(database_findings(app)) == 3


def test_pool_name_has_no_credentials_or_query():
    from fastapi_doctor.signals.database.asyncpg_pool import pool_name

    # The name a SQLAlchemy pool on the same database gets (test_db.py), from a DSN or from keywords.
    assert pool_name(("postgresql://u:pw@db.internal:6432/app?sslpassword=x",), {}) == "postgresql://db.internal:6432/app"
    assert pool_name(("postgres://u:p@ss:w@db/shop",), {}) == "postgresql://db/shop"
    assert pool_name((), {"host": "db", "port": 5433, "user": "u", "password": "pw", "database": "app"}) == (
        "postgresql://db:5433/app"
    )
    assert pool_name((), {"dsn": "postgresql:///app?host=/run/postgresql"}) == "postgresql:///app"


UNDO_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    import fastapi_doctor.signals.database.asyncpg_pool
    imported_early = "asyncpg" in sys.modules

    import fastapi_doctor
    from fastapi_doctor import _agent

    fastapi_doctor.instrument(prometheus_port=0)
    import asyncpg
    from asyncpg import connection, pool, prepared_stmt

    def functions():
        return {
            "asyncpg.connect": vars(asyncpg)["connect"],
            **{f"Connection.{m}": vars(connection.Connection)[m]
               for m in ("execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany")},
            **{f"PreparedStatement.{m}": vars(prepared_stmt.PreparedStatement)[m]
               for m in ("executemany", "fetch", "fetchrow", "fetchval", "fetchmany")},
            **{f"Pool.{m}": vars(pool.Pool)[m] for m in ("__init__", "_acquire", "_get_new_connection")},
            "PoolConnectionHolder._release": vars(pool.PoolConnectionHolder)["_release"],
        }

    agent = _agent.get()
    (signal,) = [s for s in agent.signals if s.name == "asyncpg"]
    during = functions()
    wrapped = sorted(k for k, f in during.items() if getattr(f, "__wrapped__", None) is not None)
    watchdog = sum(t.name == "fastapi-doctor-db-watchdog" for t in threading.enumerate())
    hooked = signal.queries.finished in agent.request_metrics.finished_hooks
    hooks = agent.request_metrics.finished_hooks
    fastapi_doctor.uninstrument()
    after = functions()
    print(json.dumps({
        "imported_early": imported_early,
        "wrapped": wrapped,
        "restored": sorted(k for k in during if after[k] is during[k].__wrapped__),
        "watchdogs": [watchdog, sum(t.name == "fastapi-doctor-db-watchdog" for t in threading.enumerate())],
        "hooked": [hooked, signal.queries.finished in hooks],
    }))
    """
)


def test_uninstrument_undoes_every_wrapper(tmp_path):
    result = subprocess.run(
        [str(BIN / "python"), "-c", UNDO_SCRIPT], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported_early"] is False  # importing the signal imports no asyncpg
    names = [
        "Connection.execute", "Connection.executemany", "Connection.fetch", "Connection.fetchmany",
        "Connection.fetchrow", "Connection.fetchval", "Pool.__init__", "Pool._acquire", "Pool._get_new_connection",
        "PoolConnectionHolder._release", "PreparedStatement.executemany", "PreparedStatement.fetch",
        "PreparedStatement.fetchmany", "PreparedStatement.fetchrow", "PreparedStatement.fetchval", "asyncpg.connect",
    ]
    assert report["wrapped"] == names
    assert report["restored"] == names
    assert report["watchdogs"] == [1, 0]  # the pool watchdog (no sqlalchemy here: the db signal has none)
    assert report["hooked"] == [True, False]


def _observable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.items() if k.lower() != "date"]
    return response.status_code, headers, response.content


def test_failures_inside_the_signal_never_change_the_response(serve, database):
    paths = ["/api/articles/?limit=12", "/api/articles/feed", "/api/reports/count", "/api/reports/leaky",
             *["/api/search/fresh-pool", "/api/search/fresh-connection", "/api/search/fresh-database"] * 3]
    bare = serve("asyncpg_app:app", wrapper=False, env={"PG_DSN": database["dsn"]})
    auth = login(bare)
    expected = [_observable(httpx.get(bare.url + p, headers=auth)) for p in paths]
    bare.stop()
    faulty = serve("asyncpg_faulty:app", env={"PG_DSN": database["dsn"]})
    auth = login(faulty)
    assert [_observable(httpx.get(faulty.url + p, headers=auth)) for p in paths] == expected
    components = ("asyncpg acquire", "asyncpg release", "asyncpg statements", "asyncpg pool", "asyncpg connect")
    text = metrics_when(
        faulty, lambda t: all(metric_value(t, "fastapi_doctor_internal_errors_total", fastapi_doctor_component=c)
                              for c in components),
    )
    assert faulty.logs().count("internal error in asyncpg statements") == 1  # logged once
    assert metric_value(text, "fastapi_doctor_internal_errors_total", fastapi_doctor_component="asyncpg statements") > 50


# Versions before Connection.fetchmany (0.30), one before Pool.is_closing (0.28): apps on their lock
# files run such versions. The newest Python each has wheels for.
OLD_ASYNCPG = {"0.27.0": (3, 11), "0.29.0": (3, 12)}


@pytest.fixture(scope="module", params=sorted(OLD_ASYNCPG))
def old_asyncpg(request) -> tuple[str, Path]:
    """(version, directory): an older asyncpg installed beside the project's, first on the app's path."""
    import sys

    version = request.param
    if sys.version_info[:2] > OLD_ASYNCPG[version]:
        pytest.skip(f"asyncpg {version} has no wheel for this Python")
    target = Path(__file__).resolve().parent.parent / ".cache" / f"asyncpg-{version}"
    if not (target / "asyncpg").is_dir():
        result = subprocess.run([str(BIN / "python"), "-m", "pip", "install", "-q", "--no-deps", "--target",
                                 str(target), f"asyncpg=={version}"], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"asyncpg {version} could not be installed: {result.stderr[-300:]}")
    return version, target


def test_an_asyncpg_without_fetchmany_counts_statements_as_the_newest(serve, database, old_asyncpg):
    # One statement method the older asyncpg lacks took the whole signal down: no statement counted, no N+1.
    version, path = old_asyncpg
    app = serve("asyncpg_app:app", env={"PG_DSN": database["dsn"], "PYTHONPATH": f"{path}:{APPS}"})
    assert httpx.get(app.url + "/pool").json()["asyncpg"] == version
    auth = login(app)
    assert len(httpx.get(app.url + "/api/articles/?limit=12", headers=auth).json()) == 12
    (f,) = wait_until(lambda: app.findings("n_plus_one"))
    assert f["route"] == "/api/articles/" and f["location"] == mark("n+1")
    assert f["evidence"]["executions"] == 12


def test_a_connection_never_released_on_an_asyncpg_before_0_30_is_a_leak_at_its_acquire_line(
        serve, database, old_asyncpg):
    # Its pools and connection holders take no weak reference: the pool was not watched at all.
    version, path = old_asyncpg
    app = serve("asyncpg_app:app", env={"PG_DSN": database["dsn"], "PYTHONPATH": f"{path}:{APPS}",
                                        "FASTAPI_DOCTOR_LEAK_SECONDS": "2"})
    assert httpx.get(app.url + "/pool").json()["asyncpg"] == version
    auth = login(app)
    assert httpx.get(app.url + "/api/reports/count", headers=auth).status_code == 200
    assert httpx.get(app.url + "/api/reports/leaky", headers=auth).json() == {"articles": 20}
    f = wait_until(lambda: finding(app, "pool_leak", route="/api/reports/leaky"), timeout=15)
    assert f["method"] == "GET" and f["location"] == mark("leak")
    assert f["evidence"]["reason"] == "request_finished" and f["evidence"]["pool"] == database["pool"]
    assert metric_value(app.metrics_text(), "db_client_connection_count", db_client_connection_state="used",
                        db_client_connection_pool_name=database["pool"]) == 1
    assert [x["route"] for x in database_findings(app)] == ["/api/reports/leaky"]
