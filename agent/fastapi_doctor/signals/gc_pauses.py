"""Garbage-collection pauses, by generation (``fastapi_doctor.gc.pause``).

A collection holds the GIL: every thread, the event loop included, stops for it. The ``gc.callbacks``
hook only stamps the start and appends (start, end, generation) to a deque: it must not call into the
metrics SDK, whose locks the interrupted thread may hold (a collection can start inside ``record()``).
The pauses are recorded into the histogram on the event loop's heartbeat. Long pauses are kept for a
while so the event-loop watchdog does not blame a blocked episode on the code a collection interrupted.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

from fastapi_doctor.kernel.metrics import histogram

_monotonic = time.monotonic

# Pauses not yet recorded (duration, generation); bounded when no loop drains them.
_pending: deque[tuple[float, int]] = deque(maxlen=4096)
# Pauses of at least a millisecond, (start, end), for :func:`overlap`.
_history: deque[tuple[float, float]] = deque(maxlen=256)
_started = [0.0]

PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = _monotonic()
        return
    end = _monotonic()
    start = _started[0]
    if start:
        duration = end - start
        _pending.append((duration, info.get("generation", 0)))
        if duration >= 0.001:
            _history.append((start, end))


def overlap(start: float, end: float) -> float:
    """Seconds of GC pauses between ``start`` and ``end`` (monotonic clock)."""
    total = 0.0
    for p_start, p_end in list(_history):
        lo = max(start, p_start)
        hi = min(end, p_end)
        if hi > lo:
            total += hi - lo
    return total


class GCSignal:
    name = "gc"

    def __init__(self) -> None:
        self._histogram: Any = None
        self._attrs: dict[int, dict[str, int]] = {}

    def instrument(self, agent: Any) -> None:
        from fastapi_doctor.signals.eventloop import hub

        self._histogram = histogram(
            agent,
            "fastapi_doctor.gc.pause",
            unit="s",
            description="Garbage-collection pauses (every thread waits), by generation.",
            boundaries=PAUSE_BUCKETS,
        )
        self._attrs = {generation: {"gc.generation": generation} for generation in range(3)}
        _pending.clear()
        if _callback not in gc.callbacks:
            gc.callbacks.append(_callback)
        hub.tick_callbacks.append(self.drain)
        hub.acquire(self, agent)

    def uninstrument(self) -> None:
        from fastapi_doctor.signals.eventloop import hub

        while _callback in gc.callbacks:
            gc.callbacks.remove(_callback)
        if self.drain in hub.tick_callbacks:
            hub.tick_callbacks.remove(self.drain)
        hub.release(self)
        self.drain()
        _started[0] = 0.0

    def drain(self, *_tick: Any) -> None:
        """Record the pauses collected since the last call (on the loop's heartbeat)."""
        histogram = self._histogram
        if histogram is None:
            return
        while _pending:
            try:
                duration, generation = _pending.popleft()
            except IndexError:
                return
            attrs = self._attrs.get(generation)
            if attrs is None:
                attrs = {"gc.generation": generation}
            histogram.record(duration, attrs)
