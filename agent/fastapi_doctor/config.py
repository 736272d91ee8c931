"""Every setting of the agent, parsed in one place.

Each setting is an environment variable (``FASTAPI_DOCTOR_*``, or the standard ``OTEL_*`` one where
OpenTelemetry defines it) and also a keyword argument of :func:`fastapi_doctor.instrument` (the
field name, e.g. ``loop_block_ms=50``). A bad value never stops the app: it gives one error naming
the setting, the value and what is allowed, and the default applies.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ROOT_CAUSES = (
    "blocking_io",
    "dependency_rebuild",
    "pool_leak",
    "slow_middleware",
    "large_payload",
    "n_plus_one",
    "task_leak",
)

# Detectors a user can switch off one by one (FASTAPI_DOCTOR_DISABLED_DETECTORS).
DETECTORS = (
    "eventloop",
    "threadpool",
    "gc",
    "process",
    "dependencies",
    "middleware",
    "responses",
    "db",
    "tasks",
    "asyncpg",
    "logs",
)

# OTEL_TRACES_SAMPLER values the agent implements.
SAMPLERS = (
    "parentbased_traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "traceidratio",
    "always_on",
    "always_off",
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """One bad setting: names the variable, the value and what is allowed."""

    def __init__(self, env: str, value: object, allowed: str) -> None:
        self.env = env
        self.value = value
        self.allowed = allowed
        super().__init__(f"{env}={value!r} is invalid: allowed {allowed}; using the default")


def _bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError
    return value


def _positive_int(raw: str) -> int:
    value = int(raw.strip())
    if value <= 0:
        raise ValueError
    return value


def _port(raw: str) -> int:
    value = int(raw.strip())
    if not 0 <= value <= 65535:
        raise ValueError
    return value


def _ratio(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        word = raw.strip().lower()
        if word not in allowed:
            raise ValueError
        return word

    return parse


def _names(allowed: tuple[str, ...]) -> Callable[[str], frozenset[str]]:
    def parse(raw: str) -> frozenset[str]:
        names = frozenset(n.strip().lower() for n in raw.split(",") if n.strip())
        if not names <= set(allowed):
            raise ValueError
        return names

    return parse


def _text_list(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _token(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if len(value) < 8 or any(c.isspace() for c in value):
        raise ValueError
    return value


def _host(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError
    return value


@dataclass(frozen=True)
class Setting:
    field: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    allowed: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("enabled", "FASTAPI_DOCTOR_ENABLED", True, _bool, "true or false", "Turn the whole agent on or off."),
    Setting("test_mode", "FASTAPI_DOCTOR_TEST_MODE", False, _bool, "true or false",
            "Inside a test suite (the pytest plugin sets it): no side server, no exporters, the global "
            "OpenTelemetry providers left alone; findings stay in the process."),
    Setting("loop_block_ms", "FASTAPI_DOCTOR_LOOP_BLOCK_MS", 100.0, _positive_float, "a number of milliseconds > 0",
            "The event loop not ticking for this long is a blocked episode."),
    Setting("heartbeat_ms", "FASTAPI_DOCTOR_HEARTBEAT_MS", 50.0, _positive_float, "a number of milliseconds > 0",
            "Interval of the event-loop heartbeat that measures lag."),
    Setting("threadpool_wait_seconds", "FASTAPI_DOCTOR_THREADPOOL_WAIT_SECONDS", 2.0, _positive_float,
            "a number of seconds > 0", "Tasks waiting this long for a worker thread make a threadpool finding."),
    Setting("slow_dependency_ms", "FASTAPI_DOCTOR_SLOW_DEPENDENCY_MS", 25.0, _positive_float,
            "a number of milliseconds > 0",
            "A sync dependency spending this much of its own CPU time per build, on the same inputs, computes "
            "again what it could keep; dashboards draw it as the slow line (slow alone is not a finding)."),
    Setting("slow_middleware_ms", "FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS", 25.0, _positive_float,
            "a number of milliseconds > 0", "A middleware layer whose self-time p50 is above this is slow."),
    Setting("middleware_timed_per_second", "FASTAPI_DOCTOR_MIDDLEWARE_TIMED_PER_SECOND", 50.0, _non_negative_float,
            "a number >= 0 (0: every request)",
            "At most this many requests per second and process have their middleware layers timed (0: every request)."),
    Setting("leak_seconds", "FASTAPI_DOCTOR_LEAK_SECONDS", 30.0, _positive_float, "a number of seconds > 0",
            "A pool connection checked out longer than this is a leak."),
    Setting("pool_wait_seconds", "FASTAPI_DOCTOR_POOL_WAIT_SECONDS", 2.0, _positive_float, "a number of seconds > 0",
            "A pool with every connection in use and callers waiting this long without a break is too small."),
    Setting("large_response_bytes", "FASTAPI_DOCTOR_LARGE_RESPONSE_BYTES", 262144, _positive_int,
            "a whole number of bytes > 0", "Uncompressed bodies above this are large payloads."),
    Setting("n_plus_one_threshold", "FASTAPI_DOCTOR_N_PLUS_ONE_THRESHOLD", 10, _positive_int,
            "a whole number > 0", "Executions of one statement fingerprint in one request that make an N+1."),
    Setting("task_leak_seconds", "FASTAPI_DOCTOR_TASK_LEAK_SECONDS", 30.0, _positive_float, "a number of seconds > 0",
            "A task of the app still pending this long after the request that created it is a leak."),
    Setting("gc_freeze", "FASTAPI_DOCTOR_GC_FREEZE", True, _bool, "true or false",
            "Under the wrapper, freeze the objects that exist before the app is imported (gc.freeze()): "
            "full collections then walk only the app's objects."),
    Setting("max_findings", "FASTAPI_DOCTOR_MAX_FINDINGS", 500, _positive_int, "a whole number > 0",
            "At most this many distinct findings are kept; the oldest is evicted."),
    Setting("disabled_detectors", "FASTAPI_DOCTOR_DISABLED_DETECTORS", frozenset(), _names(DETECTORS),
            "a comma-separated list of " + ", ".join(DETECTORS), "Detectors to switch off."),
    Setting("library_modules", "FASTAPI_DOCTOR_LIBRARY_MODULES", (), _text_list,
            "a comma-separated list of module names", "Extra modules whose frames are library code, not yours."),
    Setting("auth_token", "FASTAPI_DOCTOR_AUTH_TOKEN", None, _token, "at least 8 characters, no spaces",
            "When set, /, /doctor and /profile need 'Authorization: Bearer <token>'."),
    Setting("protect_metrics", "FASTAPI_DOCTOR_PROTECT_METRICS", False, _bool, "true or false",
            "Also require the token for /metrics."),
    Setting("profiling", "FASTAPI_DOCTOR_PROFILING", False, _bool, "true or false",
            "Serve /profile (needs pyinstrument)."),
    Setting("log_requests", "FASTAPI_DOCTOR_LOG_REQUESTS", "slow", _choice("all", "slow", "off"), "all, slow or off",
            "Which requests get a log record: all, slow (errors, slow and with findings) or off."),
    Setting("log_format", "FASTAPI_DOCTOR_LOG_FORMAT", "text", _choice("text", "json"), "text or json",
            "Format of the request and slow-query log."),
    Setting("slow_request_ms", "FASTAPI_DOCTOR_SLOW_REQUEST_MS", 1000.0, _positive_float,
            "a number of milliseconds > 0", "Requests slower than this are logged."),
    Setting("slow_query_ms", "FASTAPI_DOCTOR_SLOW_QUERY_MS", 200.0, _positive_float, "a number of milliseconds > 0",
            "Statements slower than this are logged."),
    Setting("log_repeat_seconds", "FASTAPI_DOCTOR_LOG_REPEAT_SECONDS", 60.0, _positive_float,
            "a number of seconds > 0",
            "Identical request or slow-query records within this window are written once, then summarised."),
    Setting("redact_query", "FASTAPI_DOCTOR_REDACT_QUERY", True, _bool, "true or false",
            "Replace query-string values in exported spans (url.query, url.full) with REDACTED; keys stay."),
    # Standard OpenTelemetry variables the agent reads itself.
    Setting("service_name", "OTEL_SERVICE_NAME", "fastapi-app", _host, "a non-empty name without spaces",
            "service.name of everything the agent emits."),
    Setting("prometheus_host", "OTEL_EXPORTER_PROMETHEUS_HOST", "localhost", _host, "a host name or address",
            "Address the side server (/metrics, /doctor, /) binds to."),
    Setting("prometheus_port", "OTEL_EXPORTER_PROMETHEUS_PORT", 9464, _port, "a port number 0-65535",
            "Port of the side server; 0 picks a free one."),
    Setting("traces_sampler", "OTEL_TRACES_SAMPLER", "parentbased_traceidratio", _choice(*SAMPLERS),
            ", ".join(SAMPLERS), "Head sampler (the ratio applies to the traceidratio ones)."),
    Setting("traces_sampler_arg", "OTEL_TRACES_SAMPLER_ARG", 0.1, _ratio, "a ratio from 0 to 1",
            "Share of requests whose traces are recorded (head sampling)."),
    Setting("traces_per_second", "FASTAPI_DOCTOR_TRACES_PER_SECOND", 2.0, _non_negative_float,
            "a number >= 0 (0: no limit)",
            "At most this many requests per second and process start a trace (below it the ratio decides; ratio 1 traces all)."),
    Setting("otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", None, _host, "a URL such as http://localhost:4317",
            "Where spans and metrics go over OTLP/gRPC; unset means Prometheus pull only."),
    Setting("otlp_timeout_s", "OTEL_EXPORTER_OTLP_TIMEOUT", 5.0, _positive_float, "a number of seconds > 0",
            "Deadline of one OTLP export (retries included)."),
    Setting("metric_export_interval_ms", "OTEL_METRIC_EXPORT_INTERVAL", 60000.0, _positive_float,
            "a number of milliseconds > 0", "Interval of the OTLP metric export."),
    Setting("export_app_logs", "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", False, _bool, "true or false",
            "Also export the app's own logging records over OTLP (needs OTEL_EXPORTER_OTLP_ENDPOINT)."),
)

SETTINGS_BY_FIELD = {s.field: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    test_mode: bool = False
    loop_block_ms: float = 100.0
    heartbeat_ms: float = 50.0
    threadpool_wait_seconds: float = 2.0
    slow_dependency_ms: float = 25.0
    slow_middleware_ms: float = 25.0
    middleware_timed_per_second: float = 50.0
    leak_seconds: float = 30.0
    pool_wait_seconds: float = 2.0
    large_response_bytes: int = 262144
    n_plus_one_threshold: int = 10
    task_leak_seconds: float = 30.0
    gc_freeze: bool = True
    max_findings: int = 500
    disabled_detectors: frozenset[str] = frozenset()
    library_modules: tuple[str, ...] = ()
    auth_token: str | None = None
    protect_metrics: bool = False
    profiling: bool = False
    log_requests: str = "slow"
    log_format: str = "text"
    slow_request_ms: float = 1000.0
    slow_query_ms: float = 200.0
    log_repeat_seconds: float = 60.0
    redact_query: bool = True
    service_name: str = "fastapi-app"
    prometheus_host: str = "localhost"
    prometheus_port: int = 9464
    traces_sampler: str = "parentbased_traceidratio"
    traces_sampler_arg: float = 0.1
    traces_per_second: float = 2.0
    otlp_endpoint: str | None = None
    otlp_timeout_s: float = 5.0
    metric_export_interval_ms: float = 60000.0
    export_app_logs: bool = False

    def detector_enabled(self, name: str) -> bool:
        return name not in self.disabled_detectors

    def __repr__(self) -> str:  # never print the token
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if shown["auth_token"] is not None:
            shown["auth_token"] = "<set>"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def load(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[Settings, list[ConfigError]]:
    """Settings from the environment, then keyword overrides; with one error per bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw is None or (raw.strip() == "" and setting.field != "auth_token"):
            continue
        try:
            values[setting.field] = setting.parse(raw)
        except (ValueError, TypeError, OverflowError):
            errors.append(ConfigError(setting.env, raw, setting.allowed))
    for name, value in (overrides or {}).items():
        setting = SETTINGS_BY_FIELD.get(name)
        if setting is None:
            errors.append(ConfigError(name, value, "one of " + ", ".join(SETTINGS_BY_FIELD)))
            continue
        try:
            values[name] = _coerce(setting, value)
        except (ValueError, TypeError, OverflowError):
            errors.append(ConfigError(name, value, setting.allowed))
    return Settings(**values), errors


def _coerce(setting: Setting, value: Any) -> Any:
    """A keyword value goes through the same parser as its environment variable."""
    if value is None and setting.default is None:
        return None
    if isinstance(value, bool) and setting.parse is not _bool:
        raise ValueError
    if isinstance(value, (set, frozenset, list, tuple)):
        value = ",".join(str(v) for v in value)
    return setting.parse(str(value))


def environment_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) rows, for the README and `fastapi-doctor check-config --list`."""
    rows = []
    for s in SETTINGS:
        default = s.default
        if isinstance(default, (frozenset, tuple)):
            default = ",".join(sorted(default)) or "(empty)"
        rows.append((s.env, "(unset)" if default is None else str(default).lower() if isinstance(default, bool) else str(default), s.help))
    return rows
