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
    "httpx": lambda key: key == "httpx.Client.__init__",
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


# -- the instrumentation context itself, without a server -------------------------------------------


def test_request_hooks_run_in_their_declared_order_whatever_the_order_they_come_in():
    from fastapi_doctor.kernel.instrumentation_context import PUBLISHERS, Instrumentation

    hooks: list = []
    installs = Instrumentation(lambda: hooks)

    def request_log(state): ...
    def dependencies(state): ...
    def responses(state): ...

    installs.on_request_finished(request_log, order=PUBLISHERS)
    installs.on_request_finished(dependencies)
    installs.on_request_finished(responses)
    assert hooks == [dependencies, responses, request_log]
    installs.undo()
    assert hooks == []


def test_undo_runs_newest_first_each_contained_and_only_once(caplog):
    from fastapi_doctor.kernel.instrumentation_context import Instrumentation

    ran: list[str] = []
    installs = Instrumentation()
    installs.record(lambda: ran.append("first"))
    installs.record(lambda: 1 / 0, "a failing undo")
    installs.record(lambda: ran.append("last"))
    installs.undo()
    assert ran == ["last", "first"]
    assert "internal error in uninstrument a failing undo" in caplog.text
    installs.undo()
    assert ran == ["last", "first"]


def test_a_patch_is_restored_an_inherited_one_deleted_and_one_wrapped_since_left_in_its_chain():
    from fastapi_doctor.kernel.instrumentation_context import Instrumentation

    class Base:
        def inherited(self) -> str:
            return "base"

    class Child(Base):
        def own(self) -> str:
            return "own"

        def wrapped_later(self) -> str:
            return "original"

    own = Child.__dict__["own"]
    installs = Instrumentation()
    installs.patch(Child, "inherited", lambda original: lambda self: "agent:" + original(self))
    installs.patch(Child, "own", lambda original: lambda self: "agent:" + original(self))
    agents = installs.patch(Child, "wrapped_later", lambda original: lambda self: "agent:" + original(self))
    Child.wrapped_later = lambda self: "theirs:" + agents(self)  # another instrumentor, over the agent's
    assert (Child().inherited(), Child().own(), Child().wrapped_later()) == ("agent:base", "agent:own", "theirs:agent:original")

    installs.undo()
    assert "inherited" not in Child.__dict__ and Base.__dict__["inherited"](Child()) == "base"
    assert Child.__dict__["own"] is own
    assert Child().wrapped_later() == "theirs:agent:original"  # theirs kept, with ours inside


def test_installs_that_stand_together_are_undone_when_one_fails():
    from fastapi_doctor.kernel.instrumentation_context import Instrumentation

    class Target:
        def method(self) -> str:
            return "original"

    original = Target.__dict__["method"]
    installs = Instrumentation()
    try:
        with installs.all_or_nothing() as part:
            part.patch(Target, "method", lambda f: lambda self: "patched")
            raise LookupError("the library moved")
    except LookupError:
        pass
    assert Target.__dict__["method"] is original
    installs.undo()  # nothing left to undo
    assert Target.__dict__["method"] is original


def test_an_import_hook_undone_before_the_import_does_not_run(tmp_path, monkeypatch):
    from fastapi_doctor.kernel.instrumentation_context import Instrumentation

    (tmp_path / "undo_probe_library.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[str] = []
    undone, running = Instrumentation(), Instrumentation()
    undone.when_imported("undo_probe_library", lambda module: seen.append("undone"))
    running.when_imported("undo_probe_library", lambda module: seen.append("running"))
    undone.undo()
    import undo_probe_library  # noqa: F401

    assert seen == ["running"]
    running.undo()
