"""The agent's core pieces in process: settings, findings, attribution, sampling, the side server."""

from __future__ import annotations

import contextvars
import json
import time
import urllib.error
import urllib.request

import pytest
from apps import loop_free_helpers as helpers  # noqa: F401  (a user module outside the library dirs)

from fastapi_doctor import attribution, config, sampling
from fastapi_doctor.findings import FindingsRegistry, Location
from fastapi_doctor.publish import server


# -- settings ---------------------------------------------------------------------------------------


def test_defaults_match_the_documented_names():
    settings, errors = config.load(environ={})
    assert errors == []
    assert (settings.loop_block_ms, settings.slow_dependency_ms, settings.slow_middleware_ms) == (100, 25, 25)
    assert (settings.leak_seconds, settings.large_response_bytes, settings.max_findings) == (30, 262144, 500)
    assert settings.enabled is True and settings.prometheus_port == 9464


# Every setting but free-text lists (where every value is valid).
CHECKED_SETTINGS = [s for s in config.SETTINGS if s.parse is not config._text_list]


@pytest.mark.parametrize("setting", CHECKED_SETTINGS, ids=lambda s: s.env)
def test_every_setting_names_a_bad_value_and_keeps_its_default(setting):
    textual = setting.env.endswith(("_HOST", "_ENDPOINT", "SERVICE_NAME", "_TOKEN"))
    bad = "1 2 3" if textual else "not-a-valid-value!"
    settings, errors = config.load(environ={setting.env: bad})
    assert len(errors) == 1
    shown = "(hidden)" if setting.secret else bad  # OTLP headers carry credentials
    assert str(errors[0]) == f"{setting.env}={shown!r} is invalid: allowed {setting.allowed}; using the default"
    if setting.field is not None:  # None: read by the SDK only
        assert getattr(settings, setting.field) == setting.default


def test_keyword_overrides_go_through_the_same_parsers():
    settings, errors = config.load(environ={}, overrides={"loop_block_ms": 50, "disabled_detectors": ["gc", "process"]})
    assert errors == [] and settings.loop_block_ms == 50.0
    assert settings.disabled_detectors == frozenset({"gc", "process"})
    settings, errors = config.load(environ={}, overrides={"loop_block_ms": -1, "nonsense": 3})
    assert settings.loop_block_ms == 100.0
    assert [e.env for e in errors] == ["loop_block_ms", "nonsense"]


def test_settings_repr_hides_the_token():
    settings, _ = config.load(environ={"FASTAPI_DOCTOR_AUTH_TOKEN": "s3cret-token-value"})
    assert settings.auth_token == "s3cret-token-value"
    assert "s3cret" not in repr(settings)


# -- findings -------------------------------------------------------------------------------------


def test_occurrences_of_one_key_merge_and_memory_is_bounded():
    seen = []
    registry = FindingsRegistry(max_findings=2, clock=iter(range(100)).__next__)
    registry.add_listener(lambda f, new: seen.append((f.route, new)))
    here = Location("app.py", 10, "handler")
    registry.report("blocking_io", route="/a", summary="s1", evidence={"ms": 1}, location=here)
    registry.report("blocking_io", route="/a", summary="s2", evidence={"ms": 2}, location=here)
    [finding] = registry.all()
    assert finding.count == 2 and finding.evidence == {"ms": 2}
    assert (finding.first_seen, finding.last_seen) == (0, 1)
    assert finding.as_dict()["runbook"] == "docs/runbooks/blocking_io.md"
    registry.report("pool_leak", route="/b", summary="s", evidence={})
    registry.report("pool_leak", route="/c", summary="s", evidence={})
    assert [f.route for f in registry.all()] == ["/b", "/c"] and registry.evicted == 1
    assert seen == [("/a", True), ("/a", False), ("/b", True), ("/c", True)]
    with pytest.raises(ValueError):
        registry.report("gremlins", route=None, summary="", evidence={})


def test_finding_document_schema():
    registry = FindingsRegistry()
    f = registry.report("large_payload", route="/big", summary="big", evidence={"p50_bytes": 3_000_000},
                        location=Location("app.py", 3, "big"))
    doc = f.as_dict()
    assert set(doc) == {"id", "root_cause", "method", "route", "summary", "evidence", "location", "first_seen",
                        "last_seen", "count", "runbook"}
    assert doc["location"] == {"file": "app.py", "line": 3, "function": "big"}
    assert doc["first_seen"].endswith("Z")
    assert doc["method"] is None
    json.dumps(doc)


def test_a_get_and_a_post_on_one_route_are_two_findings():
    registry = FindingsRegistry()
    get = registry.report("large_payload", route="/items/", summary="s", evidence={}, method="GET")
    post = registry.report("large_payload", route="/items/", summary="s", evidence={}, method="POST")
    again = registry.report("large_payload", route="/items/", summary="s", evidence={}, method="GET")
    assert again is get and post is not get and get.id != post.id
    assert [(f.as_dict()["method"], f.as_dict()["route"], f.count) for f in registry.all()] == [
        ("POST", "/items/", 1), ("GET", "/items/", 2)]
    from fastapi_doctor.publish.report.terminal import render_finding, render_table

    doc = {"service": "shop", "pid": 1, "findings": [f.as_dict() for f in registry.all()]}
    table = render_table(doc)
    assert "POST /items/" in table and "GET /items/" in table
    assert "route     GET /items/" in render_finding(get.as_dict())


# -- attribution ----------------------------------------------------------------------------------


def test_library_and_user_frames():
    assert attribution.is_library_file(json.__file__)
    assert attribution.is_library_file(pytest.__file__)
    assert attribution.is_library_file(attribution.__file__)
    assert not attribution.is_library_file(helpers.__file__)


def test_call_in_names_the_blocking_call_as_the_user_wrote_it():
    import sys

    captured = {}

    def spy(*_args):
        # The frame of the helper that called us, stopped on its call.
        captured["stack"] = attribution.capture(sys._getframe(1))

    helpers.run_with(spy)
    info = attribution.first_user_frame(captured["stack"])
    assert info is not None and info.function == "run_with"
    assert attribution.call_in(info) == "callback"
    loc = attribution.location(info)
    assert loc.file.endswith("tests/apps/loop_free_helpers.py") and loc.line == helpers.CALL_LINE


def test_call_resolution_follows_imports():
    import hashlib
    import time as time_module

    assert attribution._resolve("time.sleep", {"time": time_module}) == "time.sleep"
    assert attribution._resolve("sleep", {"sleep": time_module.sleep}) == "time.sleep"
    assert attribution._resolve("hl.pbkdf2_hmac", {"hl": hashlib}) == "hashlib.pbkdf2_hmac"
    assert attribution._resolve("unknown.thing", {}) == "unknown.thing"


def test_caller_location_skips_library_frames():
    loc = helpers.where_am_i(attribution.caller_location)
    assert loc is not None and loc.function == "where_am_i" and loc.line == helpers.WHERE_LINE


# -- sampling -------------------------------------------------------------------------------------


def _scope(traceparent: bytes | None = None) -> dict:
    headers = [(b"host", b"x")] + ([(b"traceparent", traceparent)] if traceparent else [])
    return {"type": "http", "headers": headers}


def _excluded(scope: dict) -> bool:
    # Each request runs in its own task, hence its own context.
    return contextvars.Context().run(sampling.exclude_unsampled, scope)


def test_admission_follows_the_callers_flag_then_the_ratio():
    sampling.configure(0.0)
    assert _excluded(_scope()) is True
    assert _excluded(_scope(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")) is False
    sampling.configure(1.0)
    assert _excluded(_scope(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")) is True
    assert _excluded(_scope()) is False
    assert _excluded({"type": "websocket", "headers": []}) is False
    sampling.configure(0.25, traces_per_second=0)  # no limit
    decisions = [contextvars.Context().run(sampling.admit, _scope()) for _ in range(4000)]
    assert 800 < sum(decisions) < 1200


def test_traces_per_second_caps_the_ratio_but_not_the_callers_flag(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(sampling, "_monotonic", lambda: now[0])
    sampling.configure(0.5, traces_per_second=10)

    def admitted(n: int, traceparent: bytes | None = None) -> int:
        return sum(contextvars.Context().run(sampling.admit, _scope(traceparent)) for _ in range(n))

    assert admitted(1000) == 10  # a burst of a full second's worth, then nothing
    assert admitted(1000) == 0
    caller = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert admitted(50, caller) == 50  # the caller's trace is followed, limit or not
    now[0] += 0.5
    assert admitted(1000) == 5
    now[0] += 60
    assert admitted(1000) == 10  # the bucket holds one second's worth, not a minute's
    sampling.configure(1.0, traces_per_second=10)
    assert admitted(100) == 100  # ratio 1 traces every request
    sampling.configure(0.1, traces_per_second=10)


def test_a_decision_taken_earlier_in_the_request_holds():
    def request() -> tuple[bool, bool]:
        sampling.configure(1.0)
        first = sampling.admit(_scope())
        sampling.configure(0.0)  # a later look must not re-roll the decision
        return first, sampling.exclude_unsampled(_scope())

    assert contextvars.Context().run(request) == (True, False)


# -- side server ----------------------------------------------------------------------------------


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_side_server_routes_and_stop():
    doc = {"service": "svc", "findings": []}
    side = server.start(server.SideApp(doctor=lambda: doc, page=lambda d, host: "<html>page</html>", token=None), "127.0.0.1", 0)
    assert side is not None
    base = f"http://127.0.0.1:{side.port}"
    try:
        assert _get(base + "/healthz") == (200, b"ok\n")
        assert json.loads(_get(base + "/doctor")[1]) == doc
        assert _get(base + "/")[1] == b"<html>page</html>"
        status, body = _get(base + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert status == 200 and body.rstrip().endswith(b"# EOF")
        assert _get(base + "/nope")[0] == 404
    finally:
        side.stop()
    time.sleep(0.05)
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "/healthz", timeout=2)


def test_readme_lists_every_setting_with_its_default():
    from harness import ROOT

    readme = (ROOT / "README.md").read_text()
    for env, default, _meaning in config.environment_table():
        assert f"| `{env}` | `{default}` |" in readme, env
