"""The record of garbage-collection pauses: a ``gc.callbacks`` hook that only stamps and appends.

It must not call into the metrics SDK, whose locks the interrupted thread may hold (a collection can
start inside ``record()``): the GC signal drains :data:`pending` into its histogram on the loop's
heartbeat. Long pauses are kept for :func:`overlap`, so the loop watchdog and the middleware signal
do not blame the code a collection interrupted.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

_monotonic = time.monotonic

# Pauses not yet recorded (duration, generation); bounded when no loop drains them.
pending: deque[tuple[float, int]] = deque(maxlen=4096)
# Pauses of at least a millisecond, (start, end), for :func:`overlap`.
history: deque[tuple[float, float]] = deque(maxlen=256)
started = [0.0]

def callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        started[0] = _monotonic()
        return
    end = _monotonic()
    start = started[0]
    if start:
        duration = end - start
        pending.append((duration, info.get("generation", 0)))
        if duration >= 0.001:
            history.append((start, end))


def overlap(start: float, end: float) -> float:
    """Seconds of GC pauses between ``start`` and ``end`` (monotonic clock)."""
    total = 0.0
    for p_start, p_end in list(history):
        lo = max(start, p_start)
        hi = min(end, p_end)
        if hi > lo:
            total += hi - lo
    return total
