"""Garbage-collection pauses, by generation (``fastapi_doctor.gc.pause``), and the semantic conventions'
``cpython.gc.*`` counters (read from ``gc.get_stats()`` on the collection cycle, never per collection).

A collection holds the GIL: every thread, the event loop included, stops for it. The ``gc.callbacks``
hook (:mod:`fastapi_doctor.kernel.gc_pauses`, the record the loop watchdog and the middleware signal
read too) only stamps and appends; this signal installs it and records the pauses into the histogram
on the event loop's heartbeat.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from fastapi_doctor.kernel.gc_pauses import callback, pending, started
from fastapi_doctor.kernel.loop import hub
from fastapi_doctor.kernel.metrics import histogram

PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GENERATION = "cpython.gc.generation"


def _per_generation(key: str) -> Callable[[Any], list[Any]]:
    def callback(_options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(stats[key], {GENERATION: generation}) for generation, stats in enumerate(gc.get_stats())]

    return callback


# (name, callback, unit, description): module-level, so a second instrument() gets the same instruments back.
_COUNTERS = (
    ("cpython.gc.collections", _per_generation("collections"), "{collection}",
     "The number of times a generation was collected since interpreter start."),
    ("cpython.gc.collected_objects", _per_generation("collected"), "{object}",
     "The total number of objects collected inside a generation since interpreter start."),
    ("cpython.gc.uncollectable_objects", _per_generation("uncollectable"), "{object}",
     "The total number of objects which were found to be uncollectable inside a generation since interpreter start."),
)


class GCSignal:
    name = "gc"

    def __init__(self) -> None:
        self._histogram: Any = None
        self._attrs: dict[int, dict[str, int]] = {}

    def instrument(self, agent: Any) -> None:
        self._histogram = histogram(
            agent,
            "fastapi_doctor.gc.pause",
            unit="s",
            description="Garbage-collection pauses (every thread waits), by generation.",
            boundaries=PAUSE_BUCKETS,
        )
        self._attrs = {generation: {GENERATION: generation} for generation in range(3)}
        for name, observe, unit, description in _COUNTERS:
            agent.meter.create_observable_counter(name, callbacks=[observe], unit=unit, description=description)
        pending.clear()
        installs = agent.instrumentation
        installs.record(self._last_drain, "gc pauses")  # undone after the callback is out
        if callback not in gc.callbacks:
            installs.add(gc.callbacks, callback)
        installs.add(hub.tick_callbacks, self.drain)
        hub.acquire(self, agent)

    def _last_drain(self) -> None:
        self.drain()
        started[0] = 0.0

    def drain(self, *_tick: Any) -> None:
        """Record the pauses collected since the last call (on the loop's heartbeat)."""
        histogram = self._histogram
        if histogram is None:
            return
        while pending:
            try:
                duration, generation = pending.popleft()
            except IndexError:
                return
            attrs = self._attrs.get(generation)
            if attrs is None:
                attrs = {GENERATION: generation}
            histogram.record(duration, attrs)
