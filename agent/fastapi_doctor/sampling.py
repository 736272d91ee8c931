"""Head sampling decided once per request, before any span machinery runs.

FastAPI's native telemetry costs about half the app's throughput even when the SDK sampler drops
the span: its per-request work runs regardless. So the decision is taken at admission, in FastAPI's
``telemetry={"exclude": ...}`` hook: unsampled requests skip FastAPI's telemetry entirely (the
agent's own middleware still measures them), sampled ones get FastAPI's spans. The SDK sampler
follows the same decision, so spans of a request (database spans included) are all kept or all
dropped.

A sampled request costs about 0.5 ms of CPU more than an unsampled one (FastAPI's request and
operation spans, their export), so a ratio alone makes the cost grow with the load: at 3,000 req/s,
0.1 is 300 traces a second and a sixth of a core. Like X-Ray's reservoir or Datadog's trace rate limit,
at most ``FASTAPI_DOCTOR_TRACES_PER_SECOND`` requests per second start a trace (a token bucket; the
ratio decides below it; a ratio of 1 traces every request, as asked). An incoming ``traceparent`` is always followed: the trace is the caller's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from fastapi_doctor.config import Settings

# The decision for the request this task serves: True, False, or None outside requests.
admitted: ContextVar[bool | None] = ContextVar("fastapi_doctor_admitted", default=None)

_ratio = Settings.traces_sampler_arg
_random = random.random
_monotonic = time.monotonic


class TokenBucket:
    """``rate`` per second, bursts up to ``max(rate, 1)``; ``rate`` 0 is no limit. No lock: two
    threads taking the last token at once may take one too many."""

    __slots__ = ("rate", "capacity", "tokens", "at", "ready_at")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.at = _monotonic()
        self.ready_at = self.at  # no token before this moment: a refused take reads the clock only

    def take(self) -> bool:
        if self.rate <= 0.0:
            return True
        now = _monotonic()
        if now < self.ready_at:
            return False
        tokens = self.tokens + (now - self.at) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.at = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        self.ready_at = now + (1.0 - tokens) / self.rate
        return False


_bucket = TokenBucket(Settings.traces_per_second)


def configure(ratio: float, traces_per_second: float | None = None) -> None:
    global _ratio, _bucket
    _ratio = ratio
    if traces_per_second is not None:
        _bucket = TokenBucket(traces_per_second)


def admit(scope: Any) -> bool:
    """Decide for a request: follow an incoming ``traceparent``'s sampled flag, else the ratio."""
    decision = None
    for name, value in scope.get("headers", ()):
        if name == b"traceparent":
            decision = _traceparent_sampled(value)
            break
    if decision is None:
        decision = _ratio > 0 and (_ratio >= 1 or (_random() < _ratio and _bucket.take()))
    admitted.set(decision)
    return decision


def exclude_unsampled(scope: Any) -> bool:
    """FastAPI's ``exclude`` hook: True skips FastAPI's telemetry for this request."""
    if scope.get("type") != "http":
        return False
    try:
        decision = admitted.get()  # taken a moment ago by the agent's FastAPI.__call__ hook
        return not (admit(scope) if decision is None else decision)
    except Exception:
        return True


def _traceparent_sampled(value: bytes) -> bool | None:
    # version-traceid-spanid-flags; the low bit of flags is "sampled"
    parts = value.split(b"-")
    if len(parts) < 4 or len(parts[3]) < 2:
        return None
    try:
        return bool(int(parts[3][:2], 16) & 1)
    except ValueError:
        return None


class AdmissionSampler(Sampler):
    """Root sampler: inside a request, keep its admission decision; elsewhere, the trace-id ratio."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        decision = admitted.get()
        if decision is None:
            return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        state = get_current_span(parent_context).get_span_context().trace_state
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE if decision else Decision.DROP, attributes if decision else None, state
        )

    def get_description(self) -> str:
        return f"FastAPIDoctorAdmission{{{self._ratio.get_description()}}}"


def sampler(ratio: float, traces_per_second: float | None = None) -> Sampler:
    configure(ratio, traces_per_second)
    return ParentBased(root=AdmissionSampler(ratio))
