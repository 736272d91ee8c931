"""Histograms for the request path, much cheaper to record than the SDK's.

Measured here: one ``Histogram.record`` of the OpenTelemetry SDK costs 7-12 us (it validates and
hashes the attributes and takes a lock per reader on every call), more than the whole request
budget allows once a request records several. These histograms record with a dictionary lookup
and an append to the series' array of pending values; the values are bucketed in batches of
``FOLD_AT`` (and at each collection) by C code (``bisect`` mapped over the array, ``Counter``,
``sum``, ``min``, ``max``): no Python loop per value (docs/performance.md, decision 11). They are
handed to the SDK's own readers at collection time as ordinary cumulative histogram points: the
Prometheus reader and the OTLP exporter see them exactly like SDK metrics (same names, units,
attributes, scope). Exemplars are not kept.

Recording takes no lock: a value appended by another thread while a batch is being folded may, very
rarely, be lost.

Callers build their attribute mappings once (per route, per layer) and pass the same object on every
call: a series is found by the mapping's identity first, without building a key (no allocation on
the request path); the mapping is kept referenced by the cache, and must not be changed after use.
"""

from __future__ import annotations

import threading
import time
from array import array
from bisect import bisect_left
from collections import Counter
from functools import partial
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

MAX_SERIES = 2000
_MAX_BY_IDENTITY = 4 * MAX_SERIES  # callers that pass fresh mappings fall back to the key path
_OVERFLOW_KEY = (("otel.metric.overflow", True),)
# Values a series holds before they are bucketed (8 bytes each: 1 KiB per series at most).
FOLD_AT = 128


class _Cell:
    __slots__ = ("attributes", "counts", "sum", "count", "min", "max", "pending")

    def __init__(self, attributes: Mapping[str, Any], buckets: int) -> None:
        self.attributes = dict(attributes)
        self.counts = [0] * buckets
        self.sum = 0.0
        self.count = 0
        self.min = float("inf")
        self.max = float("-inf")
        self.pending = array("d")  # recorded, not yet bucketed (an array: not tracked by the collector)


class LeanHistogram:
    def __init__(self, name: str, unit: str, description: str, boundaries: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.boundaries = tuple(float(b) for b in boundaries)
        self._cells: dict[tuple[tuple[str, Any], ...], _Cell] = {}
        # id(mapping) -> (mapping, cell); holding the mapping keeps its id from being reused.
        self._by_identity: dict[int, tuple[Any, _Cell]] = {}
        self._bucket_of = partial(bisect_left, self.boundaries)
        self._lock = threading.Lock()  # when a new series appears, and around a fold

    def record(self, value: float, attributes: Mapping[str, Any] | None = None) -> None:
        known = self._by_identity.get(id(attributes))
        if known is not None and known[0] is attributes:
            cell = known[1]
        else:
            cell = self._cell_of(attributes)
        pending = cell.pending
        pending.append(value)
        if len(pending) >= FOLD_AT:
            self._fold(cell)

    def _fold(self, cell: _Cell) -> None:
        """Buckets the series' pending values (their count, sum, minimum and maximum too)."""
        with self._lock:
            values = cell.pending
            if not values:
                return
            cell.pending = array("d")
            counts = cell.counts
            for index, n in Counter(map(self._bucket_of, values)).items():
                counts[index] += n
            cell.sum += sum(values)
            cell.count += len(values)
            low, high = min(values), max(values)
            if low < cell.min:
                cell.min = low
            if high > cell.max:
                cell.max = high

    def _fold_all(self) -> list[_Cell]:
        cells = list(self._cells.values())
        for cell in cells:
            if cell.pending:
                self._fold(cell)
        return cells

    def _cell_of(self, attributes: Mapping[str, Any] | None) -> _Cell:
        key = tuple(attributes.items()) if attributes else ()
        cell = self._cells.get(key)
        if cell is None:
            cell = self._new_cell(key, attributes or {})
        if len(self._by_identity) < _MAX_BY_IDENTITY:
            self._by_identity[id(attributes)] = (attributes, cell)
        return cell

    def _new_cell(self, key: tuple[tuple[str, Any], ...], attributes: Mapping[str, Any]) -> _Cell:
        with self._lock:
            cell = self._cells.get(key)
            if cell is None:
                if len(self._cells) >= MAX_SERIES:
                    key, attributes = _OVERFLOW_KEY, dict(_OVERFLOW_KEY)
                    cell = self._cells.get(key)
                if cell is None:
                    cell = _Cell(attributes, len(self.boundaries) + 1)
                    self._cells[key] = cell
            return cell

    def points(self, start_ns: int, now_ns: int) -> list[HistogramDataPoint]:
        points = []
        for cell in self._fold_all():
            if cell.count == 0:
                continue
            points.append(
                HistogramDataPoint(
                    attributes=dict(cell.attributes),
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns,
                    count=cell.count,
                    sum=cell.sum,
                    bucket_counts=list(cell.counts),
                    explicit_bounds=list(self.boundaries),
                    min=cell.min,
                    max=cell.max,
                )
            )
        return points

    def values(self) -> dict[tuple[tuple[str, Any], ...], tuple[int, float]]:
        """(count, sum) per series, for tests and the doctor page."""
        self._fold_all()
        return {k: (c.count, c.sum) for k, c in list(self._cells.items())}


class LeanMetrics:
    """The agent's lean histograms, created once; handed to every reader at collection."""

    def __init__(self, scope_name: str, version: str) -> None:
        self.scope = InstrumentationScope(scope_name, version)
        self.start_ns = time.time_ns()
        self._histograms: dict[str, LeanHistogram] = {}

    def histogram(self, name: str, *, unit: str, description: str, boundaries: Sequence[float]) -> LeanHistogram:
        existing = self._histograms.get(name)
        if existing is not None:
            return existing
        hist = LeanHistogram(name, unit, description, boundaries)
        self._histograms[name] = hist
        return hist

    def metrics(self) -> list[Metric]:
        now = time.time_ns()
        out = []
        for hist in list(self._histograms.values()):
            points = hist.points(self.start_ns, now)
            if points:
                out.append(
                    Metric(
                        name=hist.name,
                        description=hist.description,
                        unit=hist.unit,
                        data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE),
                    )
                )
        return out

    def merge_into(self, data: MetricsData | None, resource: Resource) -> MetricsData | None:
        extra = self.metrics()
        if not extra:
            return data
        if data is None or not data.resource_metrics:
            scope_metrics = ScopeMetrics(scope=self.scope, metrics=extra, schema_url="")
            return MetricsData(resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=[scope_metrics], schema_url="")])
        first, *rest = data.resource_metrics
        # One entry per instrumentation scope: exporters key by scope, a second entry of the same
        # scope would replace the SDK's metrics of that scope.
        scopes = list(first.scope_metrics)
        for i, sm in enumerate(scopes):
            if sm.scope.name == self.scope.name and sm.scope.version == self.scope.version:
                scopes[i] = ScopeMetrics(scope=sm.scope, metrics=[*sm.metrics, *extra], schema_url=sm.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(scope=self.scope, metrics=extra, schema_url=""))
        merged = ResourceMetrics(resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url)
        return MetricsData(resource_metrics=[merged, *rest])


class _LeanReaderMixin:
    """Adds the lean histograms to what an SDK reader receives at each collection."""

    lean: LeanMetrics
    lean_resource: Resource

    def collect(self, timeout_millis: float = 10_000) -> None:
        # As MetricReader.collect, but the lean histograms are added (also when the SDK has none).
        collect = getattr(self, "_collect", None)
        if collect is None:
            return
        metrics_data = collect(self, timeout_millis=timeout_millis)
        try:
            metrics_data = self.lean.merge_into(metrics_data, self.lean_resource)
        except Exception:  # never lose the SDK's own metrics over ours
            pass
        if metrics_data is not None:
            self._receive_metrics(metrics_data, timeout_millis=timeout_millis)  # type: ignore[attr-defined]


def prometheus_reader(lean: LeanMetrics, resource: Resource) -> Any:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    class LeanPrometheusMetricReader(_LeanReaderMixin, PrometheusMetricReader):
        pass

    reader = LeanPrometheusMetricReader()
    reader.lean, reader.lean_resource = lean, resource
    return reader


def periodic_reader(lean: LeanMetrics, resource: Resource, exporter: Any, interval_ms: float) -> Any:
    class LeanPeriodicExportingMetricReader(_LeanReaderMixin, PeriodicExportingMetricReader):
        def _at_fork_reinit(self) -> None:
            # The SDK restarts the export thread in a forked child but keeps the parent's export lock:
            # forked while the parent's thread was exporting (held), the child would never export.
            self._export_lock = threading.Lock()
            super()._at_fork_reinit()

    reader = LeanPeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
    reader.lean, reader.lean_resource = lean, resource
    return reader
