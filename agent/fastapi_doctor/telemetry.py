"""OpenTelemetry providers and exporters: Prometheus pull always, OTLP/gRPC when an endpoint is set.

An unreachable collector never disturbs the app: export queues are bounded (the SDK's batch
processor drops when full; every item lost is counted in ``fastapi_doctor.export.dropped``), and the
outage is logged once when it starts and once when it ends, instead of the exporter's line per batch.
Spans are redacted on their way out (:mod:`fastapi_doctor.redaction`); fork and exit are handled by
:mod:`fastapi_doctor.lifecycle`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from fastapi_doctor import lean_metrics, sampling
from fastapi_doctor.lean_metrics import LeanMetrics
from fastapi_doctor import lifecycle, redaction
from fastapi_doctor.config import Settings
from fastapi_doctor.kernel.instrumentation_context import Instrumentation
from fastapi_doctor.version import __version__

_log = logging.getLogger("fastapi_doctor")

_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk._shared_internal",  # the batch processor's "Queue full, dropping Span." per span
)


class _Outage:
    """Logs an export outage once when it starts and once when it ends. While it lasts, each signal
    tries the collector once per ``PROBE_INTERVAL_S`` and drops the batches in between at once
    (counted): no serialisation, no gRPC call and no buffer held for a collector that does not answer."""

    PROBE_INTERVAL_S = 5.0

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self.down = False
        self.failed_batches = 0
        self._next_probe: dict[str, float] = {}
        # Exporter factories by signal, so that a forked child can build its own (lifecycle).
        self.factories: dict[str, Any] = {}

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def skip(self, signal: str) -> bool:
        """True when this batch is to be dropped without trying (the collector is down, no probe due)."""
        return self.down and time.monotonic() < self._next_probe.get(signal, 0.0)

    def result(self, ok: bool, signal: str) -> None:
        with self._lock:
            if not ok:
                self._next_probe[signal] = time.monotonic() + self.PROBE_INTERVAL_S
            if ok and self.down:
                self.down = False
                _log.warning("fastapi-doctor: OTLP export to %s works again (%s)", self.endpoint, signal)
            elif not ok:
                self.failed_batches += 1
                if not self.down:
                    self.down = True
                    _log.warning(
                        "fastapi-doctor: cannot export telemetry to the collector at %s; the app is unaffected, "
                        "telemetry is dropped until it answers (this is logged once per outage)",
                        self.endpoint,
                    )


class _QuietExporterLogs(logging.Filter):
    """Drops the exporters' per-batch retry and failure lines; :class:`_Outage` says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage().lower()
        return "export" not in message and "queue full" not in message


_QUIET = _QuietExporterLogs()  # one filter: a logger holds it once, however many times it is added


def quiet_exporter_logs(instrumentation: Instrumentation, names: Sequence[str]) -> None:
    """Quiet the per-batch lines of these exporters' loggers until ``instrumentation`` is undone."""
    for name in names:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            instrumentation.install(logger.addFilter, logger.removeFilter, _QUIET)


def instrument(pipelines: Pipelines, instrumentation: Instrumentation) -> None:
    """What the agent puts on the process's pipelines while it runs (the providers themselves are global
    and stay): collections gated for fork safety (lifecycle.collect_gate), the exporters' retry lines
    quieted."""
    for reader in pipelines.readers:
        lifecycle.gate_collection(instrumentation, reader)
    quiet_exporter_logs(instrumentation, pipelines.quiet_loggers)


_wrappers: list[Any] = []  # the OTLP exporter wrappers of this process, re-created after a fork


class OutageAwareSpanExporter(lifecycle.Recreatable, SpanExporter):
    def __init__(self, inner: SpanExporter, outage: _Outage) -> None:
        self._inner = inner
        self._outage = outage
        self._factory = lambda: outage.factories["traces"]()
        _wrappers.append(self)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._outage.skip("traces"):
            lifecycle.dropped.add(len(spans), lifecycle.TRACES)
            return SpanExportResult.FAILURE
        try:
            batch = redaction.spans(spans)
        except Exception as exc:  # never export what could not be redacted
            from fastapi_doctor import containment

            containment.report("span redaction", exc)
            lifecycle.dropped.add(len(spans), lifecycle.TRACES)
            return SpanExportResult.FAILURE
        try:
            result = self._inner.export(batch)
        except Exception:
            result = SpanExportResult.FAILURE
        if result != SpanExportResult.SUCCESS:
            lifecycle.dropped.add(len(spans), lifecycle.TRACES)
        self._outage.result(result == SpanExportResult.SUCCESS, "traces")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class OutageAwareMetricExporter(lifecycle.Recreatable, MetricExporter):
    def __init__(self, inner: MetricExporter, outage: _Outage) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._outage = outage
        self._factory = lambda: outage.factories["metrics"]()
        _wrappers.append(self)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self._outage.skip("metrics"):
            lifecycle.dropped.add(lifecycle.count_points(metrics_data), lifecycle.METRICS)
            return MetricExportResult.FAILURE
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            result = MetricExportResult.FAILURE
        if result != MetricExportResult.SUCCESS:
            lifecycle.dropped.add(lifecycle.count_points(metrics_data), lifecycle.METRICS)
        self._outage.result(result == MetricExportResult.SUCCESS, "metrics")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


@dataclass
class Pipelines:
    tracer_provider: Any
    meter_provider: Any
    prometheus_reader: Any
    owned: bool  # False when the app had configured its own providers first
    lean: LeanMetrics
    outage: _Outage | None = None
    readers: tuple[Any, ...] = ()  # the agent's metric readers (their collections are gated)
    quiet_loggers: tuple[str, ...] = ()  # the exporters' loggers (with OTLP)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        from prometheus_client import REGISTRY

        try:
            REGISTRY.unregister(self.prometheus_reader._collector)
        except Exception:
            pass
        if not self.owned:
            return
        for provider in (self.tracer_provider, self.meter_provider):
            try:
                provider.force_flush(int(timeout_s * 1000)) if provider is self.tracer_provider else None
                provider.shutdown()
            except Exception:
                _log.debug("provider shutdown failed", exc_info=True)


def _sampling_ratio(settings: Settings) -> float:
    name = settings.traces_sampler
    if name in ("always_on", "parentbased_always_on"):
        return 1.0
    if name in ("always_off", "parentbased_always_off"):
        return 0.0
    return settings.traces_sampler_arg


def resource(settings: Settings) -> Resource:
    return Resource.create(
        {
            "service.name": settings.service_name,
            "telemetry.distro.name": "fastapi-doctor",
            "telemetry.distro.version": __version__,
            "process.pid": os.getpid(),
        }
    )


# Contrib's SQLAlchemy instrumentation's meter (loaded by opentelemetry-instrument beside the agent).
CONTRIB_SQLALCHEMY = "opentelemetry.instrumentation.sqlalchemy"


def views() -> list[Any]:
    """Metrics other instrumentations emit that the agent's own say already, dropped so that nothing is
    counted twice: the pool's connections by state are the agent's ``db.client.connection.count``
    (the semantic conventions' name); contrib's SQLAlchemy instrumentation still emits them as the
    deprecated ``db.client.connections.usage``, and would double them when it moves to the new name."""
    from opentelemetry.sdk.metrics.view import DropAggregation, View

    return [
        View(instrument_name=name, meter_name=CONTRIB_SQLALCHEMY, aggregation=DropAggregation())
        for name in ("db.client.connections.usage", "db.client.connection.count")
    ]


def build(settings: Settings) -> Pipelines:
    """Create and register the global providers (or join the app's own, when it set them first)."""
    res = resource(settings)
    redaction.configure(query_values=settings.redact_query)
    lean = LeanMetrics("fastapi_doctor", __version__)
    prometheus_reader = lean_metrics.prometheus_reader(lean, res)
    outage: _Outage | None = None
    readers: list[Any] = [prometheus_reader]
    span_exporter: SpanExporter | None = None
    endpoint = settings.otlp_endpoint
    if endpoint:
        try:
            outage, span_exporter, reader = _otlp(settings, endpoint, lean, res)
            readers.append(reader)
        except Exception as exc:  # Prometheus pull and the findings do not need OTLP
            _log.error(
                "fastapi-doctor: OTLP export to %s cannot start (%s: %s); the agent runs without it "
                "(Prometheus pull and /doctor work)", endpoint, type(exc).__name__, exc,
            )
            outage, span_exporter = None, None
            _wrappers.clear()  # nothing to re-create after a fork

    current_tracer = trace.get_tracer_provider()
    current_meter = metrics.get_meter_provider()
    owned = _is_proxy(current_tracer) and _is_proxy(current_meter)
    if owned:
        # Shut down at exit by lifecycle (bounded), not by the SDK's own unbounded atexit handlers.
        tracer_provider = TracerProvider(
            resource=res, sampler=sampling.sampler(_sampling_ratio(settings), settings.traces_per_second), shutdown_on_exit=False
        )
        if span_exporter is not None:
            tracer_provider.add_span_processor(lifecycle.BoundedSpanProcessor(span_exporter))
        meter_provider = MeterProvider(resource=res, metric_readers=readers, shutdown_on_exit=False, views=views())
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    else:
        # The app configured OpenTelemetry itself: keep its providers, add what we can.
        _log.info("fastapi-doctor: OpenTelemetry providers already set by the app; joining them")
        tracer_provider = current_tracer
        meter_provider = current_meter
        if hasattr(meter_provider, "add_metric_reader"):
            for reader in readers:
                meter_provider.add_metric_reader(reader)
        if span_exporter is not None and hasattr(tracer_provider, "add_span_processor"):
            tracer_provider.add_span_processor(lifecycle.BoundedSpanProcessor(span_exporter))
        sampling.configure(_sampling_ratio(settings), settings.traces_per_second)
    lifecycle.create_dropped_counter(metrics.get_meter("fastapi_doctor", __version__))
    lifecycle.register(
        lifecycle.Lifecycle(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            resource=res,
            owned=owned,
            exporters=tuple(_wrappers),
            on_fork=(outage.after_fork,) if outage is not None else (),
        )
    )
    return Pipelines(tracer_provider, meter_provider, prometheus_reader, owned, lean, outage, tuple(readers),
                     _EXPORTER_LOGGERS if outage is not None else ())


def in_process(settings: Settings) -> Pipelines:
    """Pipelines for a test suite: nothing is exported or served, no global provider is set, no thread
    is started. Instruments are no-ops; findings, which the tests read, do not go through them."""
    from opentelemetry.metrics import NoOpMeterProvider

    sampling.configure(1.0, 0.0)  # every request is measured in full, whatever the app's own telemetry says
    return Pipelines(trace.get_tracer_provider(), NoOpMeterProvider(), None, False, LeanMetrics("fastapi_doctor", __version__))


def _otlp(settings: Settings, endpoint: str, lean: LeanMetrics, res: Resource) -> tuple[_Outage, SpanExporter, Any]:
    """The OTLP/gRPC span exporter and metric reader (built, not yet connected)."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    outage = _Outage(endpoint)
    insecure = not endpoint.startswith("https://")
    timeout = settings.otlp_timeout_s
    outage.factories = {
        "traces": lambda: OTLPSpanExporter(endpoint=endpoint, insecure=insecure, timeout=timeout),
        "metrics": lambda: OTLPMetricExporter(endpoint=endpoint, insecure=insecure, timeout=timeout),
    }
    reader = lean_metrics.periodic_reader(
        lean, res, OutageAwareMetricExporter(outage.factories["metrics"](), outage), settings.metric_export_interval_ms
    )
    span_exporter = OutageAwareSpanExporter(outage.factories["traces"](), outage)
    return outage, span_exporter, reader


def _is_proxy(provider: Any) -> bool:
    cls = type(provider)
    return cls.__name__ in ("ProxyTracerProvider", "_ProxyMeterProvider", "NoOpTracerProvider", "NoOpMeterProvider")
