"""``fastapi_doctor.uninstrument()`` leaves the process as it found it.

A real app (routers with a prefix and an auth dependency, CORS, GZip, sync endpoints on SQLAlchemy
sessions, a lifespan) is instrumented in code with every detector, profiling and an OTLP endpoint,
serves requests, and is uninstrumented: the classes and modules the agent patches, SQLAlchemy's
event listeners, every logger's level, handlers and filters (the exporters' quieting filters too),
``gc.callbacks`` and the app's dependencies are, by identity, what they were before.
"""

from __future__ import annotations

import json
import subprocess

from harness import APPS, BIN

# What instrumenting changes, one of each kind the undo must take back (found by name in the report).
CHANGED_WHILE_INSTRUMENTED = {
    "FastAPI's class": lambda key: key.startswith("fastapi.applications.FastAPI."),
    "fastapi.routing": lambda key: key == "fastapi.routing.solve_dependencies",
    "Starlette's JSONResponse": lambda key: key == "starlette.responses.JSONResponse.render",
    "SQLAlchemy's dialects": lambda key: key.endswith("Dialect.do_execute"),
    "SQLAlchemy's pools": lambda key: key.endswith("Pool.connect"),
    "SQLAlchemy's pool listeners": lambda key: key == "listeners pool.checkout",
    "SQLAlchemy's session listeners": lambda key: key == "listeners session.after_begin",
    "asyncpg": lambda key: key == "asyncpg.pool.Pool._acquire",
    "httpx": lambda key: key == "httpx._client.Client.__init__",
    "logging's records": lambda key: key == "logging.Logger.makeRecord",
    "the agent's loggers": lambda key: key == "logger fastapi_doctor.requests",
    "the exporters' loggers": lambda key: key == "logger opentelemetry.sdk.trace.export",
    "gc.callbacks": lambda key: key == "gc.callbacks",
    "the app's dependencies": lambda key: key == "app dependencies",
}


def test_uninstrument_leaves_the_process_as_it_was(tmp_path):
    result = subprocess.run(
        [str(BIN / "python"), str(APPS / "undo_all.py"), str(tmp_path / "app.db")],
        cwd=APPS, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [200, 200] * 3 + [401]
    # The comparison sees the agent's changes (it can fail) ...
    unseen = [kind for kind, match in CHANGED_WHILE_INSTRUMENTED.items() if not any(map(match, report["during"]))]
    assert unseen == [], report["during"]
    # ... and none is left after uninstrument().
    assert report["after"] == []
