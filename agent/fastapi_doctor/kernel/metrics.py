"""Histograms recorded on the app's path (the request, the loop)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# Series per route are the Prometheus bill of a large app (docs/metrics.md, "Series budget"). A per-route
# duration whose quantile a dashboard charts against a threshold: buckets that bracket the thresholds
# (25 ms slow dependency, 100 ms loop block) without the sub-millisecond detail nobody charts per route;
# 11 series per route instead of 19.
ROUTE_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# A per-route histogram of which dashboards and rules read only the mean (``_sum`` / ``_count``): no
# buckets, three series per route (the +Inf bucket, ``_sum``, ``_count``).
MEAN_ONLY: tuple[float, ...] = ()


def histogram(agent: Any, name: str, unit: str, description: str, boundaries: Sequence[float]) -> Any:
    """The agent's lean histogram (about 1 us a record, versus 7-12 us for the SDK's) when it has
    them, else the SDK's."""
    lean = getattr(agent, "lean", None)
    if lean is not None:
        return lean.histogram(name, unit=unit, description=description, boundaries=tuple(boundaries))
    return agent.meter.create_histogram(
        name, unit=unit, description=description, explicit_bucket_boundaries_advisory=tuple(boundaries)
    )
