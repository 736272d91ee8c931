"""Bad input to the settings: every FASTAPI_DOCTOR_* and OTEL_* value the agent reads, fuzzed through
``config.load`` (never an exception, always a named error and the default), then a real process
started with a handful of nasty values (it serves, each value named once)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time

import httpx
import psutil
import pytest
from harness import BIN, metric_value, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastapi_doctor import config

SETTINGS = config.SETTINGS
DEFAULTS = config.Settings()

# Text a user can put in an environment variable, plus values near each parser's edges.
_EDGES = st.sampled_from([
    "", " ", "0", "-0", "1", "-1", "0.0", "1e309", "-1e309", "nan", "inf", "-inf", "1_000", "0x10", "65536",
    "65535", "true", "TRUE ", "yes", "off", "maybe", "1.5", "٣", "\u00a0", "a,b", ",", "eventloop,,gc",
    "eventloop, nonsense", "http://localhost:4317", "always_on", "xray", " always_off ", "9" * 5000,
    "\x00", "\udcff", "tok en", "short", "a-very-long-valid-token",
])
_VALUES = st.one_of(_EDGES, st.text(max_size=40), st.text(alphabet="0123456789.-+eE_ ", max_size=12))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SETTINGS), _VALUES)
def test_every_environment_value_parses_or_is_named_with_the_default_applied(setting, raw):
    loaded, errors = config.load(environ={setting.env: raw})
    value = getattr(loaded, setting.field) if setting.field else None  # None: read by the SDK only
    if errors:
        (error,) = errors
        assert isinstance(error, config.ConfigError)
        shown = "(hidden)" if setting.secret else raw  # OTLP headers carry credentials
        assert error.env == setting.env and error.value == shown
        assert str(error) == f"{setting.env}={shown!r} is invalid: allowed {setting.allowed}; using the default"
        assert value == setting.default
    else:
        assert isinstance(value, type(setting.default)) or setting.default is None
    # The other settings are untouched by this one.
    others = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded) if f.name != setting.field}
    assert others == {k: v for k, v in dataclasses.asdict(DEFAULTS).items() if k != setting.field}


def test_every_number_has_a_range_stated_in_its_error():
    # An accepted value must not break things (1e308 stopped a thread, 1e-300 burnt a core): every
    # numeric setting has bounds, and the error says them.
    numeric = [s for s in SETTINGS if isinstance(s.default, (int, float)) and not isinstance(s.default, bool)]
    assert numeric
    for setting in numeric:
        assert " from " in setting.allowed and " to " in setting.allowed, setting.env
        for extreme in ("1e308", "-1e308", "inf", "nan"):
            _, errors = config.load(environ={setting.env: extreme})
            assert errors, (setting.env, extreme)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([s.env for s in SETTINGS]), _VALUES, max_size=8))
def test_many_bad_values_at_once_give_one_error_each(environ):
    _, errors = config.load(environ=environ)
    named = [e.env for e in errors]
    assert len(named) == len(set(named))
    assert set(named) <= set(environ)


_OVERRIDES = st.one_of(
    _VALUES, st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
    st.lists(st.text(max_size=8), max_size=3), st.binary(max_size=8), st.just(object()),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*(s.field for s in SETTINGS), "not_a_setting"]), _OVERRIDES)
def test_keyword_overrides_never_raise(field, value):
    loaded, errors = config.load(environ={}, overrides={field: value})
    assert len(errors) <= 1
    if errors:
        assert errors[0].env == field
        if field in config.SETTINGS_BY_FIELD:
            assert getattr(loaded, field) == config.SETTINGS_BY_FIELD[field].default


NASTY = {
    "FASTAPI_DOCTOR_LOOP_BLOCK_MS": "nan",
    "FASTAPI_DOCTOR_MAX_FINDINGS": "9" * 5000,
    "FASTAPI_DOCTOR_DISABLED_DETECTORS": "eventloop,\u00e9v\u00e9nement",
    "FASTAPI_DOCTOR_AUTH_TOKEN": "short",
    "OTEL_TRACES_SAMPLER": "xray",
    "OTEL_TRACES_SAMPLER_ARG": "1e309",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "-5",
    "OTEL_METRIC_EXPORT_INTERVAL": "inf",
    "OTEL_SERVICE_NAME": " ",  # blank: the default, silently
}


@pytest.mark.parametrize("wrapper", [True, False], ids=["wrapper", "in-code"])
def test_a_process_with_nasty_values_serves_and_names_each_once(serve, wrapper):
    env = dict(NASTY)
    # The OTLP exporter's own variables, which the SDK reads: a bad one must not stop the agent.
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "999999"})
    app = serve("in_code:app" if not wrapper else "rel_app:app", env=env, wrapper=wrapper)
    assert httpx.get(app.url + "/").json() == {"status": "ok"}
    assert httpx.get(app.side_url + "/healthz").text == "ok\n"  # the agent runs
    logs = app.logs()
    for name, value in NASTY.items():
        if not value.strip():
            continue
        message = f"{name}={value!r} is invalid"
        assert logs.count(message) == 1, name
    assert "OTEL_BSP_SCHEDULE_DELAY / OTEL_BSP_MAX_EXPORT_BATCH_SIZE are invalid" in logs
    assert "internal error in agent start-up" not in logs and "failed to load" not in logs


# -- the SDK's own variables and values that parse but break things, through real processes ----------

def _check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
    return subprocess.run([str(BIN / "fastapi-doctor"), "check-config"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def _named_once(logs: str, name: str, value: str, allowed: str) -> None:
    line = f"fastapi-doctor: {name}={value!r} is invalid: allowed {allowed}; using the default"
    assert logs.count(line) == 1, logs[-3000:]


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "abc", "a whole number from 0 to 100000"),
        ("OTEL_ATTRIBUTE_COUNT_LIMIT", "abc", "a whole number from 0 to 100000"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "abc", "gzip, deflate or none"),
    ],
)
def test_a_bad_sdk_variable_is_named_once_and_the_whole_agent_runs(serve, otlp, name, value, allowed):
    # Before: the SDK raised at import (limits) or in the exporter (compression): the agent was off, or
    # start-up failed and took Prometheus pull down with it.
    app = serve("rel_app:app", env={name: value, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
                                    "OTEL_TRACES_SAMPLER_ARG": "1.0", "OTEL_BSP_SCHEDULE_DELAY": "100"})
    httpx.get(app.url + "/items/7")
    assert metric_value(app.metrics_text(), "http_server_request_duration_seconds_count",
                        http_route="/items/{item_id}") == 1
    wait_until(lambda: [s for s in otlp.spans() if s.attributes.get("http.route") == "/items/{item_id}"], timeout=15)
    logs = app.logs()
    _named_once(logs, name, value, allowed)
    assert "Traceback" not in logs and "internal error" not in logs and "failed to load" not in logs
    result = _check_config({name: value})
    assert result.returncode == 1 and f"{name}={value!r} is invalid: allowed {allowed}" in result.stderr


def _idle_cpu_share(pid: int, seconds: float = 3.0) -> float:
    process = psutil.Process(pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(seconds)  # measuring an idle process over a window: nothing to wait for
    return (sum(process.cpu_times()[:2]) - before) / seconds


_INTERVAL = "a number of milliseconds from 100 to 86400000"
_HEARTBEAT = "a number of milliseconds from 5 to 10000"


@pytest.mark.parametrize(
    "bad",
    [
        {"OTEL_METRIC_EXPORT_INTERVAL": ("1e308", _INTERVAL), "FASTAPI_DOCTOR_HEARTBEAT_MS": ("1e-300", _HEARTBEAT)},
        {"OTEL_METRIC_EXPORT_INTERVAL": ("1e-300", _INTERVAL)},
    ],
    ids=["huge-interval-tiny-heartbeat", "tiny-interval"],
)
def test_a_number_outside_its_range_is_refused(serve, otlp, bad):
    # Before: 1e308 killed the metric export thread (OverflowError); 1e-300 burnt half a core while idle.
    env = {name: value for name, (value, _) in bad.items()}
    app = serve("rel_app:app", env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint})
    httpx.get(app.url + "/items/1")
    assert _idle_cpu_share(app.proc.pid) < 0.25
    logs = app.logs()
    for name, (value, allowed) in bad.items():
        _named_once(logs, name, value, allowed)
    assert "Traceback" not in logs and "OverflowError" not in logs
    result = _check_config(env)
    assert result.returncode == 1 and result.stderr.count("is invalid") == len(bad)


def test_a_side_server_host_that_does_not_resolve_is_named_as_the_host(serve):
    # Before: check-config passed, the side server was off and the message said to change the port.
    result = _check_config({"OTEL_EXPORTER_PROMETHEUS_HOST": "abc"})
    assert result.returncode == 1
    assert "OTEL_EXPORTER_PROMETHEUS_HOST='abc' is invalid: allowed an address of this machine" in result.stderr
    app = serve("rel_app:app", env={"OTEL_EXPORTER_PROMETHEUS_HOST": "abc"})
    _named_once(app.logs(), "OTEL_EXPORTER_PROMETHEUS_HOST", "abc",
                "an address of this machine (a host name that resolves, or an IP address)")
    assert httpx.get(app.side_url + "/healthz").text == "ok\n"  # the default, localhost, applies


def test_a_side_server_host_of_another_machine_is_named_as_the_host(serve):
    app = serve("rel_app:app", env={"OTEL_EXPORTER_PROMETHEUS_HOST": "192.0.2.1"})  # TEST-NET-1
    wait_until(lambda: "side server cannot listen" in app.logs(), timeout=10)
    logs = app.logs()
    assert "the host '192.0.2.1' is not an address of this machine; set OTEL_EXPORTER_PROMETHEUS_HOST" in logs
    assert "set OTEL_EXPORTER_PROMETHEUS_PORT" not in logs
    assert httpx.get(app.url + "/items/1").status_code == 200  # the app serves on
