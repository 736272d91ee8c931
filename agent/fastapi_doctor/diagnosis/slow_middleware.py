"""``slow_middleware``: a middleware layer whose own work is a large part of every request.

Decided over the window of a layer's recent self-times (the middleware signal takes off the time the
loop thread waited for a CPU, task hops and the collector's pauses): slow when its median self-time is
above ``slow_middleware_ms``, or above half of the request (and ``SHARE_FLOOR_S``) in requests that ran
alone, in at least half of the window. One finding without a route when every route seen (two at
least) pays it, else one per method and route that does (after ``MIN_CALLS`` requests of it). A
middleware that blocks the event loop is decided by the loop watchdog's rule with this root cause's
summary (:func:`loop_block_summary`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from fastapi_doctor.diagnosis import Decides, Verdict, ms, verdict_on
from fastapi_doctor.kernel.windows import MIN_CALLS
from fastapi_doctor.observations import LayerWindow

if TYPE_CHECKING:
    from fastapi_doctor.config import Settings

ROOT_CAUSE = "slow_middleware"
TITLE = "Heavy middleware"
# Under the pytest plugin a finding is listed, not failed: it is a duration over a threshold, and a
# test's first requests through a middleware pay its warm-up.
IN_TESTS = "report"


def basis(evidence: dict[str, Any]) -> str:
    """Always ``timing``: a layer's self-time over a threshold."""
    return "timing"


def decides(settings: Settings) -> Decides:
    return {LayerWindow: functools.partial(decide, slow_s=settings.slow_middleware_ms / 1000.0)}


def decide(seen: LayerWindow, *, slow_s: float, min_calls: int = MIN_CALLS) -> Verdict | None:
    if 2 * seen.flagged < seen.window or seen.requests < min_calls:
        return None
    slow = seen.self_time_p50_s > slow_s
    why = f"above FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS={slow_s * 1000:g}" if slow else f"{seen.share_p50:.0%} of the request"
    p50_ms = ms(seen.self_time_p50_s)
    if seen.route is None and seen.method is None:
        summary = (
            f"Middleware {seen.middleware} spends {p50_ms} ms of its own on every request (p50 of the last "
            f"{seen.window} requests, {why}). Every route pays it: move the work out of the request path, cache "
            f"it, or limit the middleware to the paths that need it."
        )
    else:
        others = (
            "; other routes do not pay it: the work it does for these paths is the cost"
            if seen.other_routes_fast
            else " (the only route seen so far)"
        )
        summary = (
            f"Middleware {seen.middleware} spends {p50_ms} ms of its own on {seen.method} {seen.route or '(no route)'} "
            f"(p50 of the last {seen.window} requests of this route, {why}){others}. Make that work cheaper, "
            f"cache it, or move it out of the request path (or into a dependency of the routes "
            f"that need it)."
        )
    return verdict_on(
        seen,
        root_cause=ROOT_CAUSE,
        summary=summary,
        evidence={
            "middleware": seen.middleware,
            "self_time_p50_ms": p50_ms,
            "share_of_request": round(seen.share_p50, 3),
            "requests": seen.requests,
            "threshold_ms": round(slow_s * 1000.0, 3),
        },
    )


def loop_block_summary(middleware: str | None, what: str, where: str, blocked_ms: float) -> str:
    """The summary of a block of the event loop caught inside a middleware."""
    return (
        f"Middleware {middleware} blocked the event loop for {blocked_ms:.0f} ms ({what}) in {where}; every "
        "concurrent request waited. Middleware runs on every request: make the call async or move it off the loop."
    )
