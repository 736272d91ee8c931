"""Windows of recent samples: how the request-path signals keep a p50 without sorting per request."""

from __future__ import annotations

MIN_CALLS = 20  # a finding needs at least this many calls of the same thing
EVERY = 10  # thresholds are evaluated every EVERY calls, never on each call
WINDOW = 64  # the p50 is taken over the last WINDOW calls
# "More than half of the request" only counts for parts that take at least this long: on a fast
# route any part may be half of very little.
SHARE_FLOOR_S = 0.005


class Window:
    """The last ``WINDOW`` samples of one thing (tuples), each flagged when it alone breaks a threshold.

    The count of flagged samples is kept as they come and go, so deciding costs nothing: a finding
    is due when at least half of the window is flagged (the p50 is past the threshold), checked every
    ``EVERY`` samples after ``MIN_CALLS``. Sorting happens only to write the evidence.
    """

    __slots__ = ("items", "flags", "flagged", "count")

    def __init__(self) -> None:
        self.items: list[tuple[float, ...]] = []
        self.flags: list[bool] = []
        self.flagged = 0
        self.count = 0

    def add(self, item: tuple[float, ...], flag: bool) -> bool:
        """Keep ``item``; True when a finding is due."""
        count = self.count
        if count < WINDOW:
            self.items.append(item)
            self.flags.append(flag)
        else:
            at = count % WINDOW
            if self.flags[at]:
                self.flagged -= 1
            self.items[at] = item
            self.flags[at] = flag
        if flag:
            self.flagged += 1
        count += 1
        self.count = count
        return count >= MIN_CALLS and count % EVERY == 0 and 2 * self.flagged >= len(self.items)

    def p50(self, column: int) -> float:
        values = sorted([item[column] for item in self.items])
        return values[len(values) // 2] if values else 0.0


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)
