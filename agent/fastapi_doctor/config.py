"""Every setting of the agent, parsed in one place.

Each setting is an environment variable (``FASTAPI_DOCTOR_*``, or the standard ``OTEL_*`` one where
OpenTelemetry defines it) and also a keyword argument of :func:`fastapi_doctor.instrument` (the
field name, e.g. ``loop_block_ms=50``). A bad value never stops the app: it gives one error naming
the setting, the value and what is allowed (every number has a range), and the default applies.

The table also holds the ``OTEL_*`` variables that only the OpenTelemetry SDK and its OTLP exporter
read (``field`` None): the SDK raises on a bad one at import or start-up, which would turn the whole
agent off. They are checked here, and a bad one is removed from ``os.environ`` before the SDK reads
it (:func:`sanitize_environment`), so that the SDK applies its default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi_doctor.diagnosis.registry import ROOT_CAUSES  # noqa: F401 - re-exported: the settings name them


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

_log = logging.getLogger("fastapi_doctor")

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


def between(low: float, high: float, unit: str = "", whole: bool = False) -> tuple[Callable[[str], Any], str]:
    """(parser, allowed text) of a number from ``low`` to ``high`` inclusive (a whole one if ``whole``)."""

    def parse(raw: str) -> float | int:
        value: float | int = int(raw.strip()) if whole else float(raw)
        if not low <= value <= high:  # also refuses nan
            raise ValueError
        return value

    def shown(bound: float) -> str:
        return str(int(bound)) if float(bound).is_integer() else str(bound)

    number = "a whole number" if whole else "a number"
    return parse, f"{number}{' of ' + unit if unit else ''} from {shown(low)} to {shown(high)}"


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


def _bind_host(raw: str) -> str:
    """An address of this machine to listen on: an IP address, or a name that resolves."""
    value = _host(raw)
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    try:
        socket.getaddrinfo(value, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        raise ValueError from None
    return value


def _url(raw: str) -> str:
    """An OTLP endpoint: http(s)://host[:port][/path] or host:port."""
    from urllib.parse import urlsplit

    value = _host(raw)
    parts = urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError
    parts.port  # noqa: B018 - raises ValueError on a port that is not a number 0-65535
    return value


def _key_values(raw: str) -> str:
    """OTEL_RESOURCE_ATTRIBUTES / OTEL_EXPORTER_OTLP_HEADERS: key=value pairs separated by commas."""
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ValueError
    return raw


def _installed(group: str, *also: str) -> Callable[[str], str]:
    """A comma-separated list of names of installed entry points of ``group`` (what the SDK loads)."""

    def parse(raw: str) -> str:
        from importlib.metadata import entry_points

        names = {n.strip() for n in raw.split(",") if n.strip()}
        if not names <= {*also, *(ep.name for ep in entry_points(group=group))}:
            raise ValueError
        return raw

    return parse


def _pem_file(raw: str) -> str:
    """A readable PEM file (gRPC would otherwise fail every connection, logging from C, not Python)."""
    value = raw.strip()
    try:
        with open(value, "rb") as f:
            if b"-----BEGIN " not in f.read(1_000_000):
                raise ValueError
    except OSError:
        raise ValueError from None
    return value


@dataclass(frozen=True)
class Setting:
    field: str | None  # None: read by the OpenTelemetry SDK only, checked here and never used
    env: str
    default: Any
    parse: Callable[[str], Any]
    allowed: str
    help: str
    secret: bool = False  # the value is never repeated in an error


def _sdk_settings() -> tuple[Setting, ...]:
    """The variables the OpenTelemetry SDK and its OTLP/gRPC exporter read that the agent does not
    (opentelemetry.sdk.environment_variables): whole numbers, choices, files, lists."""
    limit = between(0, 100_000, whole=True)
    length = between(0, 10_000_000, "characters", whole=True)
    rows = [
        *(Setting(None, f"OTEL_{kind}_COUNT_LIMIT", None, *limit, f"SDK: at most this many {what} (unset: 128).")
          for kind, what in (("ATTRIBUTE", "attributes per span, event, link or log record"),
                             ("SPAN_ATTRIBUTE", "attributes per span"), ("SPAN_EVENT", "events per span"),
                             ("SPAN_LINK", "links per span"), ("EVENT_ATTRIBUTE", "attributes per span event"),
                             ("LINK_ATTRIBUTE", "attributes per span link"),
                             ("LOGRECORD_ATTRIBUTE", "attributes per log record"))),
        *(Setting(None, f"OTEL_{kind}_VALUE_LENGTH_LIMIT", None, *length,
                  f"SDK: longer {what} attribute values are cut (unset: no limit).")
          for kind, what in (("ATTRIBUTE", "text"), ("SPAN_ATTRIBUTE", "span"), ("LOGRECORD_ATTRIBUTE", "log record"))),
    ]
    for prefix, what in (("BSP", "spans"), ("BLRP", "log records")):
        rows += [
            Setting(None, f"OTEL_{prefix}_SCHEDULE_DELAY", None, *between(10, 3_600_000, "milliseconds", whole=True),
                    f"SDK: interval between two exports of {what} (unset: 5000 for spans, 1000 for logs)."),
            Setting(None, f"OTEL_{prefix}_EXPORT_TIMEOUT", None, *between(1, 600_000, "milliseconds", whole=True),
                    f"SDK: deadline of one export of {what} (unset: 30000)."),
            Setting(None, f"OTEL_{prefix}_MAX_QUEUE_SIZE", None, *between(1, 1_000_000, whole=True),
                    f"SDK: {what} waiting for export; beyond it they are dropped and counted (unset: 2048)."),
            Setting(None, f"OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE", None, *between(1, 1_000_000, whole=True),
                    f"SDK: {what} per export, at most the queue size (unset: 512)."),
        ]
    rows += [
        Setting(None, "OTEL_METRIC_EXPORT_TIMEOUT", None, *between(1, 600_000, "milliseconds"),
                "SDK: deadline of one metric export (unset: 30000)."),
        Setting(None, "OTEL_SDK_DISABLED", None, _bool, "true or false", "SDK: no-op providers (the agent builds its own)."),
        Setting(None, "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", None, _bool, "true or false",
                "SDK: metrics about the SDK's own processors."),
        Setting(None, "OTEL_RESOURCE_ATTRIBUTES", None, _key_values, "key=value pairs separated by commas",
                "Extra resource attributes of everything the agent emits."),
        Setting(None, "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", None, _installed("opentelemetry_resource_detector", "*"),
                "a comma-separated list of installed resource detectors, or *",
                "SDK: resource detectors run at start-up."),
        # Read by the OpenTelemetry API when it is first imported: under the wrapper before any agent code,
        # and by FastAPI itself. A bad propagator stops the app at import with or without the agent;
        # only check-config can name it in advance.
        Setting(None, "OTEL_PROPAGATORS", None, _installed("opentelemetry_propagator", "none"),
                "a comma-separated list of installed propagators (tracecontext, baggage, ...) or none",
                "API: context propagation formats (read at import, before the agent: check it with check-config)."),
        Setting(None, "OTEL_PYTHON_CONTEXT", None, _installed("opentelemetry_context"),
                "an installed context implementation (contextvars_context)",
                "API: the runtime context implementation (read at import, before the agent)."),
        Setting(None, "OTEL_METRICS_EXEMPLAR_FILTER", None, _choice("always_on", "always_off", "trace_based"),
                "always_on, always_off or trace_based", "SDK: which measurements keep exemplars."),
        Setting(None, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", None,
                _choice("cumulative", "delta", "lowmemory"), "cumulative, delta or lowmemory",
                "Temporality of the OTLP metrics (the agent exports cumulative ones)."),
        Setting(None, "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", None,
                _choice("explicit_bucket_histogram", "base2_exponential_bucket_histogram"),
                "explicit_bucket_histogram or base2_exponential_bucket_histogram",
                "Histogram aggregation of the OTLP metrics."),
    ]
    for signal in ("", "TRACES_", "METRICS_", "LOGS_"):
        name = f"OTEL_EXPORTER_OTLP_{signal}"
        what = signal.rstrip("_").lower() or "every signal"
        rows += [
            Setting(None, name + "COMPRESSION", None, _choice("gzip", "deflate", "none"), "gzip, deflate or none",
                    f"OTLP exporter: compression ({what})."),
            Setting(None, name + "INSECURE", None, _bool, "true or false",
                    f"OTLP exporter: no TLS for an endpoint without a scheme ({what})."),
            Setting(None, name + "HEADERS", None, _key_values, "key=value pairs separated by commas",
                    f"OTLP exporter: headers of every export ({what}).", secret=True),
            Setting(None, name + "PROTOCOL", None, _choice("grpc", "http/protobuf", "http/json"),
                    "grpc, http/protobuf or http/json", f"OTLP protocol ({what}; the agent exports OTLP/gRPC)."),
            *(Setting(None, name + file, None, _pem_file, "a readable PEM file",
                      f"OTLP exporter: TLS {label} ({what}).")
              for file, label in (("CERTIFICATE", "CA certificate"), ("CLIENT_CERTIFICATE", "client certificate"),
                                  ("CLIENT_KEY", "client key"))),
        ]
        if signal:
            rows += [
                Setting(None, name + "ENDPOINT", None, _url, "a URL such as http://localhost:4317",
                        f"OTLP exporter: endpoint of {what} (the agent exports to OTEL_EXPORTER_OTLP_ENDPOINT)."),
                Setting(None, name + "TIMEOUT", None, *between(0.01, 600, "seconds"),
                        f"OTLP exporter: deadline of one export of {what}."),
            ]
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = (
    Setting("enabled", "FASTAPI_DOCTOR_ENABLED", True, _bool, "true or false", "Turn the whole agent on or off."),
    Setting("test_mode", "FASTAPI_DOCTOR_TEST_MODE", False, _bool, "true or false",
            "Inside a test suite (the pytest plugin sets it): no side server, no exporters, the global "
            "OpenTelemetry providers left alone; findings stay in the process."),
    Setting("loop_block_ms", "FASTAPI_DOCTOR_LOOP_BLOCK_MS", 100.0, *between(1, 60_000, "milliseconds"),
            "The event loop not ticking for this long is a blocked episode."),
    Setting("heartbeat_ms", "FASTAPI_DOCTOR_HEARTBEAT_MS", 50.0, *between(5, 10_000, "milliseconds"),
            "Interval of the event-loop heartbeat that measures lag."),
    Setting("threadpool_wait_seconds", "FASTAPI_DOCTOR_THREADPOOL_WAIT_SECONDS", 2.0, *between(0.01, 3600, "seconds"),
            "Tasks waiting this long for a worker thread make a threadpool finding."),
    Setting("slow_dependency_ms", "FASTAPI_DOCTOR_SLOW_DEPENDENCY_MS", 25.0, *between(0.1, 60_000, "milliseconds"),
            "A sync dependency spending this much of its own CPU time per build, on the same inputs, computes "
            "again what it could keep; dashboards draw it as the slow line (slow alone is not a finding)."),
    Setting("slow_middleware_ms", "FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS", 25.0, *between(0.1, 60_000, "milliseconds"),
            "A middleware layer whose self-time p50 is above this is slow."),
    Setting("middleware_timed_per_second", "FASTAPI_DOCTOR_MIDDLEWARE_TIMED_PER_SECOND", 50.0,
            *between(0, 1_000_000),
            "At most this many requests per second and process have their middleware layers timed (0: every request)."),
    Setting("leak_seconds", "FASTAPI_DOCTOR_LEAK_SECONDS", 30.0, *between(0.1, 86_400, "seconds"),
            "A pool connection checked out longer than this is a leak."),
    Setting("pool_wait_seconds", "FASTAPI_DOCTOR_POOL_WAIT_SECONDS", 2.0, *between(0.1, 3600, "seconds"),
            "A pool with every connection in use and callers waiting this long without a break is too small."),
    Setting("large_response_bytes", "FASTAPI_DOCTOR_LARGE_RESPONSE_BYTES", 262144,
            *between(1, 2**40, "bytes", whole=True), "Uncompressed bodies above this are large payloads."),
    Setting("n_plus_one_threshold", "FASTAPI_DOCTOR_N_PLUS_ONE_THRESHOLD", 10,
            *between(1, 100_000, whole=True), "Executions of one statement fingerprint in one request that make an N+1."),
    Setting("task_leak_seconds", "FASTAPI_DOCTOR_TASK_LEAK_SECONDS", 30.0, *between(0.1, 86_400, "seconds"),
            "A task of the app still pending this long after the request that created it is a leak."),
    Setting("gc_freeze", "FASTAPI_DOCTOR_GC_FREEZE", True, _bool, "true or false",
            "Under the wrapper, freeze the objects that exist before the app is imported (gc.freeze()): "
            "full collections then walk only the app's objects."),
    Setting("max_findings", "FASTAPI_DOCTOR_MAX_FINDINGS", 500, *between(1, 100_000, whole=True),
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
    Setting("slow_request_ms", "FASTAPI_DOCTOR_SLOW_REQUEST_MS", 1000.0,
            *between(1, 3_600_000, "milliseconds"), "Requests slower than this are logged."),
    Setting("slow_query_ms", "FASTAPI_DOCTOR_SLOW_QUERY_MS", 200.0, *between(1, 3_600_000, "milliseconds"),
            "Statements slower than this are logged."),
    Setting("log_repeat_seconds", "FASTAPI_DOCTOR_LOG_REPEAT_SECONDS", 60.0,
            *between(1, 86_400, "seconds"),
            "Identical request or slow-query records within this window are written once, then summarised; "
            "a finding that recurs after this long without an occurrence gets a new log event."),
    Setting("redact_query", "FASTAPI_DOCTOR_REDACT_QUERY", True, _bool, "true or false",
            "Replace query-string values in exported spans (url.query, url.full) with REDACTED; keys stay."),
    # Standard OpenTelemetry variables the agent reads itself.
    Setting("service_name", "OTEL_SERVICE_NAME", "fastapi-app", _host, "a non-empty name without spaces",
            "service.name of everything the agent emits."),
    Setting("prometheus_host", "OTEL_EXPORTER_PROMETHEUS_HOST", "localhost", _bind_host,
            "an address of this machine (a host name that resolves, or an IP address)",
            "Address the side server (/metrics, /doctor, /) binds to."),
    Setting("prometheus_port", "OTEL_EXPORTER_PROMETHEUS_PORT", 9464, _port, "a port number from 0 to 65535",
            "Port of the side server; 0 picks a free one."),
    Setting("child_side_server", "FASTAPI_DOCTOR_CHILD_SIDE_SERVER", True, _bool, "true or false",
            "A Python process started by an instrumented one (a test runner's worker, a subprocess that "
            "inherits the wrapper's environment) serves its own side server on the next free port; false: none."),
    Setting("traces_sampler", "OTEL_TRACES_SAMPLER", "parentbased_traceidratio", _choice(*SAMPLERS),
            ", ".join(SAMPLERS), "Head sampler (the ratio applies to the traceidratio ones)."),
    Setting("traces_sampler_arg", "OTEL_TRACES_SAMPLER_ARG", 0.1, _ratio, "a ratio from 0 to 1",
            "Share of requests whose traces are recorded (head sampling)."),
    Setting("traces_per_second", "FASTAPI_DOCTOR_TRACES_PER_SECOND", 2.0,
            *between(0, 1_000_000),
            "At most this many requests per second and process start a trace (below it the ratio decides; ratio 1 traces all)."),
    Setting("otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", None, _url, "a URL such as http://localhost:4317",
            "Where spans and metrics go over OTLP/gRPC; unset means Prometheus pull only."),
    Setting("otlp_timeout_s", "OTEL_EXPORTER_OTLP_TIMEOUT", 5.0, *between(0.01, 600, "seconds"),
            "Deadline of one OTLP export (retries included)."),
    Setting("metric_export_interval_ms", "OTEL_METRIC_EXPORT_INTERVAL", 60000.0,
            *between(100, 86_400_000, "milliseconds"), "Interval of the OTLP metric export."),
    Setting("export_app_logs", "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", False, _bool, "true or false",
            "Also export the app's own logging records over OTLP (needs OTEL_EXPORTER_OTLP_ENDPOINT)."),
    *_sdk_settings(),
)

SETTINGS_BY_FIELD = {s.field: s for s in SETTINGS if s.field is not None}


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
    child_side_server: bool = True
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
            value = setting.parse(raw)
        except (ValueError, TypeError, OverflowError):
            errors.append(ConfigError(setting.env, "(hidden)" if setting.secret else raw, setting.allowed))
            continue
        if setting.field is not None:
            values[setting.field] = value
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


_reported: set[tuple[str, object]] = set()


def report(errors: list[ConfigError]) -> None:
    """Log each bad value once per process (the wrapper checks at start-up, ``instrument()`` again)."""
    for error in errors:
        key = (error.env, error.value if isinstance(error.value, (str, int, float, bool, type(None))) else id(error.value))
        if key not in _reported:
            _reported.add(key)
            _log.error("fastapi-doctor: %s", error)


def sanitize_environment(environ: Any = None) -> list[ConfigError]:
    """Check every setting of ``environ`` (``os.environ``), log each bad value once, and remove the bad
    ``OTEL_*`` ones from it: the SDK, which reads them too (some at import), then applies its default
    instead of raising. Run before the SDK is imported. Returns the errors."""
    environ = os.environ if environ is None else environ
    _, errors = load(environ)
    report(errors)
    for error in errors:
        if error.env.startswith("OTEL_"):
            environ.pop(error.env, None)
    return errors


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
