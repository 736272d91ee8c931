"""Histograms recorded on the app's path (the request, the loop)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


def histogram(agent: Any, name: str, unit: str, description: str, boundaries: Sequence[float]) -> Any:
    """The agent's lean histogram (about 1 us a record, versus 7-12 us for the SDK's) when it has
    them, else the SDK's."""
    lean = getattr(agent, "lean", None)
    if lean is not None:
        return lean.histogram(name, unit=unit, description=description, boundaries=tuple(boundaries))
    return agent.meter.create_histogram(
        name, unit=unit, description=description, explicit_bucket_boundaries_advisory=tuple(boundaries)
    )
