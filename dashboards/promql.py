"""Small PromQL helpers shared by the dashboard and the alert rules."""

from __future__ import annotations


def sel(*matchers: str) -> str:
    """``{a, b}`` from the non-empty matchers ('' when there are none)."""
    parts = [m.strip() for m in matchers if m and m.strip()]
    return "{" + ", ".join(parts) + "}" if parts else ""


def by(*labels: str) -> str:
    return "by (" + ", ".join(labels) + ")"


def quantile(q: float, histogram: str, selector: str, window: str, *labels: str) -> str:
    """``histogram_quantile`` of a ``*_bucket`` series summed by ``labels`` (``le`` added)."""
    return (
        f"histogram_quantile({q}, sum {by(*labels, 'le')} "
        f"(rate({histogram}_bucket{selector}[{window}])))"
    )


def mean(histogram: str, selector: str, window: str, *labels: str) -> str:
    """Mean observation of a histogram over the window: rate of the sum over rate of the count."""
    return (
        f"sum {by(*labels)} (rate({histogram}_sum{selector}[{window}]))\n"
        f"  /\nsum {by(*labels)} (rate({histogram}_count{selector}[{window}]))"
    )
