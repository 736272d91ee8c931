"""The last minutes of a few figures, for the doctor page's charts.

A daemon thread reads the agent's own metrics every ``INTERVAL_S`` from the Prometheus registry (the
names of docs/metrics.md, the same the dashboards use) and keeps one point per reading in a bounded
deque: event-loop lag, pool connections in use, mean response size and request rate. It costs nothing
on the request path, knows no signal, and shows a gap where a metric is absent (a detector that is
off, no database in the app).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi_doctor import containment

INTERVAL_S = 2.0
MAX_POINTS = 300  # ten minutes at INTERVAL_S

LAG = "fastapi_doctor_eventloop_lag_seconds"
REQUESTS = "http_server_request_duration_seconds_count"
BODY = "http_server_response_body_size_bytes"
POOL_COUNT = "db_client_connection_count"
POOL_MAX = "db_client_connection_max"
POOL_PENDING = "db_client_connection_pending_requests"

# (key, title, unit) of each series, in page order.
SERIES: tuple[tuple[str, str, str], ...] = (
    ("loop_lag_ms", "Event-loop lag, p99", "ms"),
    ("pool_used", "Pool connections in use", "conn"),
    ("response_bytes", "Mean response size", "B"),
    ("request_rate", "Request rate", "req/s"),
)
# Drawn with a series, on the same axes (the pool's limit behind its use).
COMPANIONS = {"pool_used": "pool_max"}


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative values read at one instant (None: the metric is not exported)."""

    at: float
    requests: float | None
    body_sum: float | None
    body_count: float | None
    lag_buckets: tuple[tuple[float, float], ...] | None  # (upper bound, cumulative count)
    pool_used: float | None
    pool_max: float | None
    pool_pending: float | None


def read(families: Iterable[Any], at: float) -> Reading:
    sums: dict[str, float] = {}
    lag: dict[float, float] = {}
    for family in families:
        for sample in family.samples:
            name = sample.name
            if name == f"{LAG}_bucket":
                bound = math.inf if sample.labels.get("le") in ("+Inf", "inf") else float(sample.labels["le"])
                lag[bound] = lag.get(bound, 0.0) + sample.value
            elif name == POOL_COUNT:
                if sample.labels.get("db_client_connection_state") == "used":
                    sums[name] = sums.get(name, 0.0) + sample.value
                else:
                    sums.setdefault(name, 0.0)
            elif name in (REQUESTS, f"{BODY}_sum", f"{BODY}_count", POOL_MAX, POOL_PENDING):
                sums[name] = sums.get(name, 0.0) + sample.value
    return Reading(
        at=at,
        requests=sums.get(REQUESTS),
        body_sum=sums.get(f"{BODY}_sum"),
        body_count=sums.get(f"{BODY}_count"),
        lag_buckets=tuple(sorted(lag.items())) if lag else None,
        pool_used=sums.get(POOL_COUNT),
        pool_max=sums.get(POOL_MAX),
        pool_pending=sums.get(POOL_PENDING),
    )


def _delta(new: float | None, old: float | None) -> float | None:
    if new is None:
        return None
    return max(new - (old or 0.0), 0.0)


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile from cumulative (bound, count) buckets, interpolated inside the bucket (as Prometheus)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def point(new: Reading, old: Reading) -> dict[str, float | None]:
    """One chart point from two consecutive readings."""
    seconds = max(new.at - old.at, 1e-6)
    requests = _delta(new.requests, old.requests)
    body_count = _delta(new.body_count, old.body_count)
    body_sum = _delta(new.body_sum, old.body_sum)
    lag_ms = None
    if new.lag_buckets is not None:
        before = dict(old.lag_buckets or ())
        deltas = [(bound, max(count - before.get(bound, 0.0), 0.0)) for bound, count in new.lag_buckets]
        p99 = quantile(deltas, 0.99)
        lag_ms = None if p99 is None else p99 * 1000
    return {
        "t": new.at,
        "loop_lag_ms": lag_ms,
        "pool_used": new.pool_used,
        "pool_max": new.pool_max,
        "pool_pending": new.pool_pending,
        "response_bytes": body_sum / body_count if body_sum is not None and body_count else None,
        "request_rate": requests / seconds if requests is not None else 0.0,
    }


class History:
    """Bounded history fed by a daemon thread; ``start()``/``stop()`` with the agent."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Any]],
        interval_s: float = INTERVAL_S,
        max_points: int = MAX_POINTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._collect = collect
        self.interval_s = interval_s
        self._clock = clock
        self.points: deque[dict[str, float | None]] = deque(maxlen=max_points)
        self._last: Reading | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fastapi-doctor-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    @containment.contained("history")
    def sample(self) -> None:
        reading = read(self._collect(), self._clock())
        if self._last is not None:
            self.points.append(point(reading, self._last))
        self._last = reading

    def snapshot(self) -> dict[str, Any]:
        points = list(self.points)
        return {
            "interval_s": self.interval_s,
            "t": [p["t"] for p in points],
            **{key: [p.get(key) for p in points] for key in ("loop_lag_ms", "pool_used", "pool_max",
                                                             "pool_pending", "response_bytes", "request_rate")},
        }
