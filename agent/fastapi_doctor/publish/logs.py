"""Request and slow-query logs that carry the trace, and trace ids on the app's own log records.

The seed's logging middleware and its ``before_cursor_execute`` print hook, done so that they neither
flood the log nor slow the app nor leak secrets:

* the request log (:mod:`.request_log`) writes nothing for a fast successful request by default;
  errors (5xx), slow requests and requests that raised a finding get one record;
* the slow-query log (:mod:`.query_log`) writes statements slower than the threshold, as a
  fingerprint (never a parameter value);
* identical records within a window are written once and then summarised (:mod:`.log_limiter`);
* records logged through :mod:`logging` carry ``trace_id``/``span_id`` of the current sampled span
  (``None`` when there is none: unsampled requests have no trace id);
* with an OTLP endpoint, the agent's records (and, when asked, the app's) are exported over OTLP/gRPC.

Where records go: loggers ``fastapi_doctor.requests`` and ``fastapi_doctor.queries`` propagate as
usual. When no handler of the app would see them (a plain ``uvicorn app:app`` configures none on
the root logger), the agent writes them to stderr itself, so they are visible by default. The agent
never configures the root logger (only with ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true``
it adds its OTLP handler there, when the app starts, after the app's own logging set-up); route the
records with the app's own logging configuration.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from fastapi_doctor import containment
from fastapi_doctor.kernel.instrumentation_context import PUBLISHERS, Instrumentation
from fastapi_doctor.publish.log_limiter import Flusher, LogLimiter, Summary

REQUESTS_LOGGER = "fastapi_doctor.requests"
QUERIES_LOGGER = "fastapi_doctor.queries"
_LOGGER_OF_KIND = {"request": REQUESTS_LOGGER, "query": QUERIES_LOGGER}

# Fields that name a record for its summary; the per-occurrence ones (duration, ids) are left out.
IDENTITY_FIELDS = {
    "request": ("kind", "reasons", "method", "route", "status", "root_causes"),
    "query": ("kind", "statement", "db_system", "pool", "route", "location"),
}

# JSON field -> OpenTelemetry attribute of the exported log record.
_OTEL_ATTRIBUTES = {
    "method": "http.request.method",
    "route": "http.route",
    "status": "http.response.status_code",
    "response_bytes": "http.response.body.size",
    "duration_ms": "fastapi_doctor.duration_ms",
    "reasons": "fastapi_doctor.reasons",
    "root_causes": "fastapi_doctor.root_causes",
    "statement": "db.query.text",
    "db_system": "db.system.name",
    "pool": "db.client.connection.pool.name",
    "repeated": "fastapi_doctor.repeated",
    "window_s": "fastapi_doctor.window_s",
}
EVENT_NAMES = {"request": "fastapi_doctor.request", "query": "fastapi_doctor.slow_query"}

_SOURCE = os.path.abspath(__file__)


# -- formatting ------------------------------------------------------------------------------------


def _logfmt_value(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):  # a code location
        return f"{value.get('file')}:{value.get('line')}:{value.get('function')}"
    text = str(value)
    if not text or any(c in text for c in ' "=') or any(ord(c) < 32 for c in text):
        return json.dumps(text)
    return text


def render_text(fields: dict[str, Any]) -> str:
    """``request method=GET route=/items/{item_id} status=500 duration_ms=12.5 …`` (logfmt after the kind)."""
    kind = fields.get("kind", "")
    label = "slow query" if kind == "query" else kind
    parts = [label]
    for name, value in fields.items():
        if name in ("kind", "repeated", "window_s", "suppressed_other"):
            continue
        parts.append(f"{name}={_logfmt_value(value)}")
    text = " ".join(parts)
    return text + _repeat_suffix(fields)


def _repeat_suffix(fields: dict[str, Any]) -> str:
    repeated = fields.get("repeated")
    if repeated is None:
        return ""
    window = _seconds(fields.get("window_s", 0))
    if fields.get("suppressed_other"):
        return f" … {repeated:,} more records of this kind suppressed in the last {window} s (too many distinct records)"
    return f" … repeated {repeated:,} times in the last {window} s"


def _seconds(value: float) -> str:
    return f"{value:g}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def otel_attributes(fields: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None or name in ("kind", "trace_id", "span_id"):
            continue
        if name == "location":
            attrs["code.file.path"] = value["file"]
            attrs["code.line.number"] = value["line"]
            attrs["code.function.name"] = value["function"]
            continue
        key = _OTEL_ATTRIBUTES.get(name, "fastapi_doctor." + name)
        attrs[key] = list(value) if isinstance(value, (list, tuple)) else value
    return attrs


# -- the writer ------------------------------------------------------------------------------------


class LogWriter:
    """Writes the agent's records: rate limited, in one format, as :mod:`logging` records."""

    def __init__(self, fmt: str, limiter: LogLimiter, suppressed: Any) -> None:
        self.json = fmt == "json"
        self.limiter = limiter
        self._suppressed = suppressed
        self._suppressed_attrs = {kind: {"log.kind": kind} for kind in _LOGGER_OF_KIND}
        self._loggers = {kind: logging.getLogger(name) for kind, name in _LOGGER_OF_KIND.items()}

    def write(self, kind: str, level: int, key: Any, fields: dict[str, Any]) -> None:
        logger = self._loggers[kind]
        if not logger.isEnabledFor(level):
            return
        admitted, ended = self.limiter.admit(kind, key, fields)
        if ended is not None:
            self.write_summary(ended)
        if not admitted:
            self._suppressed.add(1, self._suppressed_attrs[kind])
            return
        self._emit(logger, level, fields)

    def write_summary(self, summary: Summary) -> None:
        identity = IDENTITY_FIELDS.get(summary.kind, ("kind",))
        fields = {name: summary.fields[name] for name in identity if name in summary.fields}
        fields["kind"] = summary.kind
        fields["repeated"] = summary.count
        fields["window_s"] = summary.window_s
        if summary.overflow:
            fields["suppressed_other"] = True
        self._emit(self._loggers[summary.kind], logging.WARNING, fields)

    def _emit(self, logger: logging.Logger, level: int, fields: dict[str, Any]) -> None:
        record = logger.makeRecord(logger.name, level, _SOURCE, 0, "", None, None)
        record.trace_id = fields.get("trace_id")
        record.span_id = fields.get("span_id")
        record.fastapi_doctor = fields
        if self.json:
            document = {"time": _iso(record.created), "level": record.levelname, "logger": logger.name, **fields}
            if "repeated" in fields:
                document["message"] = _repeat_suffix(fields).lstrip(" …")
            record.msg = json.dumps(document, default=str)
        else:
            record.msg = render_text(fields)
        logger.handle(record)


# -- handlers --------------------------------------------------------------------------------------


class _AgentHandler(logging.Handler):
    """Marks the agent's own handlers (they do not count as "the app routes these records")."""

    fastapi_doctor = True


def _routed_by_app(logger: logging.Logger) -> bool:
    """True when a handler that is not the agent's sees this logger's records."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if not getattr(handler, "fastapi_doctor", False):
                return True
        if not current.propagate:
            return False
        current = current.parent
    return False


class StderrFallback(_AgentHandler):
    """Writes to stderr only when no handler of the app would show the record (as uvicorn leaves it)."""

    def __init__(self, json_format: bool) -> None:
        super().__init__(logging.NOTSET)
        fmt = "%(message)s" if json_format else "%(asctime)s %(levelname)s %(name)s %(message)s"
        self.setFormatter(logging.Formatter(fmt))

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if _routed_by_app(logging.getLogger(record.name)):
            return False
        return bool(super().handle(record))

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


# -- trace ids on every record -----------------------------------------------------------------


class TraceIds:
    """Adds ``trace_id``/``span_id`` (hex, or None outside a sampled span) to every LogRecord.

    Wraps ``logging.Logger.makeRecord`` rather than the LogRecord factory: the ids are set after the
    record's ``extra``, so an app that passes its own ``extra={"trace_id": …}`` keeps it (a factory
    would make that call raise KeyError).
    """

    def __init__(self) -> None:
        self._original: Any = None
        self.active = False

    def install(self, instrumentation: Instrumentation) -> None:
        instrumentation.patch(logging.Logger, "makeRecord", self._with_trace_ids)
        self.active = True
        instrumentation.record(self._stop, "log trace ids")

    def _stop(self) -> None:
        # Where someone wrapped makeRecord after us, ours stays in their chain: a pass-through.
        self.active = False

    def _with_trace_ids(self, original: Any) -> Any:
        from opentelemetry.trace import get_current_span

        self._original = original
        me = self

        def makeRecord(  # noqa: N802 - the signature of logging.Logger.makeRecord
            self: logging.Logger,
            name: str,
            level: int,
            fn: str,
            lno: int,
            msg: object,
            args: Any,
            exc_info: Any,
            func: str | None = None,
            extra: Any = None,
            sinfo: str | None = None,
        ) -> logging.LogRecord:
            record = original(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)
            if me.active:
                try:
                    d = record.__dict__
                    if "trace_id" not in d:
                        ctx = get_current_span().get_span_context()
                        if ctx.trace_flags & 1 and ctx.is_valid:
                            d["trace_id"] = "%032x" % ctx.trace_id
                            d["span_id"] = "%016x" % ctx.span_id
                        else:
                            d["trace_id"] = d["span_id"] = None
                except Exception as exc:
                    containment.report("log trace ids", exc)
            return record

        makeRecord.__wrapped__ = original  # type: ignore[attr-defined]
        makeRecord.fastapi_doctor = True  # type: ignore[attr-defined]
        return makeRecord


# -- the signal ------------------------------------------------------------------------------------


class LogsSignal:
    name = "logs"

    def __init__(self) -> None:
        self._agent: Any = None
        self.writer: LogWriter | None = None
        self.request_log: Any = None
        self.query_log: Any = None
        self.trace_ids = TraceIds()
        self._flusher: Flusher | None = None
        self._provider: Any = None

    def instrument(self, agent: Any) -> None:
        from fastapi_doctor.publish.query_log import QueryLog
        from fastapi_doctor.publish.request_log import RequestLog

        self._agent = agent
        installs = agent.instrumentation
        settings = agent.settings
        suppressed = agent.meter.create_counter(
            "fastapi_doctor.logs.suppressed",
            unit="{record}",
            description="Request and slow-query log records not written because an identical one was (summarised).",
        )
        limiter = LogLimiter(settings.log_repeat_seconds)
        self.writer = LogWriter(settings.log_format, limiter, suppressed)
        self._flusher = Flusher(
            limiter, self._write_summary, interval_s=max(0.05, min(5.0, settings.log_repeat_seconds / 4))
        ).start()

        fallback = StderrFallback(settings.log_format == "json")
        for name in (REQUESTS_LOGGER, QUERIES_LOGGER):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
                installs.record(functools.partial(logger.setLevel, logging.NOTSET), "log level")
            installs.install(logger.addHandler, logger.removeHandler, fallback)

        if settings.otlp_endpoint:
            from fastapi_doctor.publish import log_export

            pipelines = getattr(agent, "pipelines", None)
            self._provider = log_export.logger_provider(settings, getattr(pipelines, "outage", None), installs)
            agent_export = log_export.OTLPHandler(self._provider)
            for name in (REQUESTS_LOGGER, QUERIES_LOGGER):
                logger = logging.getLogger(name)
                installs.install(logger.addHandler, logger.removeHandler, agent_export)

        self.trace_ids.install(installs)

        if settings.log_requests != "off":
            self.request_log = RequestLog(self.writer, settings)
            # After the signals' hooks, so that the findings they raise for the request are in its record.
            installs.on_request_finished(self.request_log.finished, order=PUBLISHERS)

        db_signal = next((s for s in agent.signals if s.name == "db"), None)  # its statement times, if it runs
        self.query_log = QueryLog(self.writer, settings, db_signal)
        installs.when_imported("sqlalchemy", lambda _module: self.query_log.install(installs))
        installs.on_app(self._on_app_start)

    def _on_app_start(self, app: Any) -> None:
        """Runs when the app's middleware stack is built: after the app's import-time logging set-up."""
        for name in (REQUESTS_LOGGER, QUERIES_LOGGER):
            logger = logging.getLogger(name)
            if logger.disabled:
                # dictConfig(disable_existing_loggers=True) disables loggers created before it, as ours
                # are; a logger the app configured by name is never disabled by it.
                logger.disabled = False
        if self._provider is not None and self._agent.settings.export_app_logs:
            from fastapi_doctor.publish.log_export import OTLPHandler

            root = logging.getLogger()
            if not any(isinstance(h, OTLPHandler) for h in root.handlers):
                self._agent.instrumentation.install(root.addHandler, root.removeHandler,
                                                    OTLPHandler(self._provider, app_records=True))

    def after_fork(self) -> None:
        """In a prefork worker: the summary thread did not survive the fork; start the child's own."""
        if self.writer is None:
            return
        self.writer.limiter.after_fork()
        if self._flusher is not None:
            self._flusher = Flusher(self.writer.limiter, self._write_summary, self._flusher.interval_s).start()

    def _write_summary(self, summary: Summary) -> None:
        if self.writer is not None:
            self.writer.write_summary(summary)

    def uninstrument(self) -> None:
        """Stops the summary thread and writes the summaries due; the agent's instrumentation context
        takes back the handlers, hooks, listeners and the record patch."""
        agent = self._agent
        if agent is None:
            return
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        if self.writer is not None:
            for summary in self.writer.limiter.drain():
                try:
                    self.writer.write_summary(summary)
                except Exception as exc:
                    containment.report("log summaries", exc)
        if self._provider is not None:
            from fastapi_doctor.publish import log_export

            log_export.flush(2.0)
        self._agent = None
