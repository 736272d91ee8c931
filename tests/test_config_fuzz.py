"""Bad input to the settings: every FASTAPI_DOCTOR_* and OTEL_* value the agent reads, fuzzed through
``config.load`` (never an exception, always a named error and the default), then a real process
started with a handful of nasty values (it serves, each value named once)."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
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
    value = getattr(loaded, setting.field)
    if errors:
        (error,) = errors
        assert isinstance(error, config.ConfigError)
        assert error.env == setting.env and error.value == raw
        assert str(error) == f"{setting.env}={raw!r} is invalid: allowed {setting.allowed}; using the default"
        assert value == setting.default
    else:
        assert isinstance(value, type(setting.default)) or setting.default is None
    # The other settings are untouched by this one.
    others = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded) if f.name != setting.field}
    assert others == {k: v for k, v in dataclasses.asdict(DEFAULTS).items() if k != setting.field}


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
