"""Log records over OTLP/gRPC, with the other signals, when an endpoint is configured.

One LoggerProvider per process (set as the global one unless the app set its own, which is then
joined), like the trace and metric providers of :mod:`fastapi_doctor.telemetry`:

* the export queue is bounded; records dropped (queue full, export failed) are counted in
  ``fastapi_doctor.export.dropped{signal="logs"}``; a collector outage is logged once (shared with
  the other signals);
* records are redacted in the export thread as spans are: an exception's message is removed and its
  stack cut down to code locations (FastAPI's own ``http.server.request.exception`` records carry
  both), statements become fingerprints, URL passwords and header values go;
* after a fork the child builds its own exporter (a gRPC channel is not fork-safe); at exit the
  queue is flushed within a bounded time, never the SDK's unbounded atexit flush.

:class:`OTLPHandler` turns :mod:`logging` records into OpenTelemetry log records: the agent's with
their fields as attributes, the app's (when asked) with the message and code location.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from time import time_ns
from typing import Any

from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult

from fastapi_doctor import containment, lifecycle, redaction
from fastapi_doctor.kernel import forks
from fastapi_doctor.kernel.instrumentation_context import Instrumentation
from fastapi_doctor.publish.logs import EVENT_NAMES, otel_attributes, render_text

_log = logging.getLogger("fastapi_doctor")

LOGS = {"signal": "logs"}
# The SDK's logger of the log export (its per-batch retry lines: quieted, an outage is said once).
EXPORT_LOGGER = "opentelemetry.sdk._logs._internal.export"
MAX_QUEUE_SIZE = 2048

_lock = threading.Lock()
_provider: Any = None
_exporter: OutageAwareLogExporter | None = None
_owned = False


class OutageAwareLogExporter(LogRecordExporter):
    """Redacts each batch, counts what is lost, reports outages; its inner exporter is re-built after fork."""

    def __init__(self, factory: Any, outage: Any) -> None:
        self._factory = factory
        self._inner = factory()
        self._outage = outage
        self._abandoned: list[Any] = []

    def recreate(self) -> None:
        self._abandoned.append(self._inner)  # closing the parent's channel in the child is not fork-safe
        self._inner = self._factory()

    def export(self, batch: Any) -> Any:
        try:
            for record in batch:
                _redact(record.log_record)
        except Exception as exc:  # never export what could not be redacted
            containment.report("log redaction", exc)
            lifecycle.dropped.add(len(batch), LOGS)
            return LogRecordExportResult.FAILURE
        try:
            result = self._inner.export(batch)
        except Exception:
            result = LogRecordExportResult.FAILURE
        if result != LogRecordExportResult.SUCCESS:
            lifecycle.dropped.add(len(batch), LOGS)
        if self._outage is not None:
            self._outage.result(result == LogRecordExportResult.SUCCESS, "logs")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


def _redact(api_record: Any) -> None:
    attrs = api_record.attributes
    if not attrs:
        return
    new = redaction._event_attributes("exception", attrs)
    if new is None:
        return
    for key in [k for k in attrs if k not in new]:
        del attrs[key]
    for key, value in new.items():
        if attrs.get(key) != value:
            attrs[key] = value


class BoundedLogRecordProcessor(BatchLogRecordProcessor):
    """The SDK's batch processor, counting the records it drops when its queue is full."""

    def __init__(self, exporter: LogRecordExporter, max_queue_size: int = MAX_QUEUE_SIZE) -> None:
        try:
            super().__init__(exporter, max_queue_size=max_queue_size)
        except ValueError as exc:  # OTEL_BLRP_* values the SDK rejects (it would stop the signal)
            _log.error(
                "fastapi-doctor: OTEL_BLRP_SCHEDULE_DELAY / OTEL_BLRP_MAX_EXPORT_BATCH_SIZE are invalid (%s); "
                "using the defaults (1000 ms, 512 records)",
                exc,
            )
            super().__init__(exporter, max_queue_size=max_queue_size, schedule_delay_millis=1000,
                             max_export_batch_size=512, export_timeout_millis=30000)
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        self._doctor_queue = queue if hasattr(queue, "__len__") else None
        self._doctor_capacity = max_queue_size

    def on_emit(self, log_record: Any) -> None:
        queue = self._doctor_queue
        if queue is not None and len(queue) >= self._doctor_capacity:
            lifecycle.dropped.add(1, LOGS)  # the batch processor drops its oldest record for this one
        super().on_emit(log_record)


def logger_provider(settings: Any, outage: Any, instrumentation: Instrumentation) -> Any:
    """The LoggerProvider exporting over OTLP/gRPC (built once per process); its exporter's retry lines
    are quieted until ``instrumentation`` is undone."""
    global _provider
    from fastapi_doctor import telemetry

    with _lock:
        if _provider is None:
            _provider = _build_provider(settings, outage)
            atexit.register(_at_exit)
            forks.on_fork(after_in_child=_after_fork_in_child)
    telemetry.quiet_exporter_logs(instrumentation, (EXPORT_LOGGER,))
    return _provider


def _build_provider(settings: Any, outage: Any) -> Any:
    global _exporter, _owned
    from opentelemetry import _logs
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider

    from fastapi_doctor import telemetry

    endpoint = settings.otlp_endpoint
    insecure = not endpoint.startswith("https://")
    timeout = getattr(settings, "otlp_timeout_s", None) or _env_timeout()

    def factory() -> Any:
        return OTLPLogExporter(endpoint=endpoint, insecure=insecure, timeout=timeout)

    _exporter = OutageAwareLogExporter(factory, outage)
    processor = BoundedLogRecordProcessor(_exporter)
    current = _logs.get_logger_provider()
    if type(current).__name__ in ("ProxyLoggerProvider", "NoOpLoggerProvider"):
        provider = LoggerProvider(resource=telemetry.resource(settings), shutdown_on_exit=False)
        provider.add_log_record_processor(processor)
        _logs.set_logger_provider(provider)  # FastAPI's own exception records use it too
        _owned = True
    elif hasattr(current, "add_log_record_processor"):
        provider = current  # the app's own SDK provider: join it
        provider.add_log_record_processor(processor)
    else:
        provider = LoggerProvider(resource=telemetry.resource(settings), shutdown_on_exit=False)
        provider.add_log_record_processor(processor)
        _owned = True
    return provider


def _env_timeout() -> float:
    try:
        return float(os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", "5"))
    except ValueError:
        return 5.0


def flush(timeout_s: float = lifecycle.SHUTDOWN_TIMEOUT_S) -> None:
    """Flush the export queue within ``timeout_s`` whatever the collector does."""
    provider = _provider
    if provider is None:
        return

    def work() -> None:
        try:
            provider.force_flush(int(timeout_s * 1000))
        except Exception:
            _log.debug("fastapi-doctor: log flush failed", exc_info=True)

    thread = threading.Thread(target=work, name="fastapi-doctor-log-flush", daemon=True)
    thread.start()
    thread.join(timeout_s)


def _at_exit() -> None:
    flush()
    if _owned and _provider is not None:
        threading.Thread(target=_provider.shutdown, daemon=True).start()


def _after_fork_in_child() -> None:
    try:
        if _exporter is not None:
            _exporter.recreate()
        if _owned and _provider is not None:
            # A prefork worker's records carry its own process.pid, not the master's (one per worker in
            # a fleet's log backend).
            lifecycle.stamp_pid(getattr(_provider, "resource", None), ())
    except Exception as exc:
        containment.report("log export after fork", exc)


# -- logging records -> OpenTelemetry log records ------------------------------------------------

_SEVERITY = ((logging.CRITICAL, 21), (logging.ERROR, 17), (logging.WARNING, 13), (logging.INFO, 9), (logging.DEBUG, 5))


def _severity_number(levelno: int) -> Any:
    from opentelemetry._logs import SeverityNumber

    for level, number in _SEVERITY:
        if levelno >= level:
            return SeverityNumber(number)
    return SeverityNumber(1)


class OTLPHandler(logging.Handler):
    """Sends :mod:`logging` records to the LoggerProvider.

    On the agent's loggers: the agent's records, their fields as attributes. On the root logger
    (``app_records``): the app's records with the message, code location and exception (redacted on
    export), never their ``extra`` values. The trace context is the current one, so a record logged
    inside a sampled request carries the request's trace.
    """

    fastapi_doctor = True  # one of the agent's handlers (see logs._routed_by_app)
    _SKIP = ("opentelemetry", "grpc", "fastapi_doctor")

    def __init__(self, provider: Any, app_records: bool = False) -> None:
        super().__init__(logging.NOTSET)
        self._provider = provider
        self._app_records = app_records
        self._otel_loggers: dict[str, Any] = {}

    def _otel_logger(self, name: str) -> Any:
        logger = self._otel_loggers.get(name)
        if logger is None:
            if len(self._otel_loggers) >= 512:
                name = "app"
            logger = self._otel_loggers.get(name) or self._provider.get_logger(name)
            self._otel_loggers[name] = logger
        return logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = getattr(record, "fastapi_doctor", None)
            if self._app_records:
                # The agent's records have their own handler; the export machinery's would loop.
                if fields is not None or record.name.startswith(self._SKIP):
                    return
                attributes: dict[str, Any] = {
                    "code.file.path": record.pathname,
                    "code.line.number": record.lineno,
                    "code.function.name": record.funcName or "",
                }
                if record.exc_info and record.exc_info[0] is not None:
                    import traceback

                    attributes["exception.type"] = record.exc_info[0].__name__
                    attributes["exception.stacktrace"] = "".join(traceback.format_exception(*record.exc_info))
                body: Any = record.getMessage()
                event_name = None
            else:
                if fields is None:
                    return
                attributes = otel_attributes(fields)
                body = render_text(fields)
                event_name = EVENT_NAMES.get(fields.get("kind", ""))
            self._otel_logger(record.name).emit(
                timestamp=int(record.created * 1e9),
                observed_timestamp=time_ns(),
                severity_number=_severity_number(record.levelno),
                severity_text=record.levelname,
                body=body,
                attributes=attributes,
                event_name=event_name,
            )
        except Exception as exc:
            containment.report("log export", exc)
