"""Rules: each root cause's decision as a function of observations and a clock.

A rule module (one per root cause, found by :mod:`fastapi_doctor.diagnosis.registry`) decides typed
observations (:mod:`fastapi_doctor.observations`: no frames, no requests, no threads): its
``decides(settings)`` maps each observation type it takes to a function of one observation, with
its thresholds from ``Settings`` bound, that applies them and writes the summary and the evidence of
a :class:`Verdict`. A signal hands an observation to ``agent.report``
(:class:`~fastapi_doctor.diagnosis.registry.Diagnosis`), which routes it to every rule that declared
its type and publishes the verdicts; the rule is tested without a server, over synthetic observations.

Rules import the kernel and the observations only, never a signal (an import-linter contract in
pyproject.toml).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi_doctor.kernel.location import Location


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decided finding, before the registry merges it with earlier occurrences."""

    root_cause: str
    route: str | None
    summary: str
    location: Location | None
    evidence: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    # One finding per line whichever routes it is seen on (the route is the one that paid most when
    # it was first reported; the rule names them all in the evidence).
    per_line: bool = False
    # Verdicts about one thing (a pool) that keep the method, route and line the first of them was
    # published with (:class:`FirstNamed`); None: published as decided.
    keeps_place_of: Hashable | None = None


# A rule's ``decides(settings)``: each observation type it decides, and the function (thresholds
# bound) that decides one; it returns a verdict, several, or None.
Decides = dict[type, Callable[[Any], "Verdict | Iterable[Verdict] | None"]]


class AboutARequest(Protocol):
    """An observation about one endpoint's requests, at a line of the app."""

    @property
    def route(self) -> str | None: ...

    @property
    def method(self) -> str | None: ...

    @property
    def location(self) -> Location | None: ...


def verdict_on(seen: AboutARequest, *, root_cause: str, summary: str, evidence: dict[str, Any]) -> Verdict:
    """The verdict at the observation's endpoint and line."""
    return Verdict(root_cause, seen.route, summary, seen.location, evidence, seen.method)


class Findings(Protocol):
    """Where verdicts go (:class:`fastapi_doctor.findings.FindingsRegistry`)."""

    def report(
        self,
        root_cause: str,
        *,
        route: str | None,
        summary: str,
        evidence: Any,
        location: Location | None = ...,
        method: str | None = ...,
        per_line: bool = ...,
    ) -> Any: ...


def publish(findings: Findings, verdict: Verdict | None) -> None:
    """Record ``verdict`` (nothing when the rule decided there is none)."""
    if verdict is None:
        return
    findings.report(
        verdict.root_cause,
        route=verdict.route,
        method=verdict.method,
        summary=verdict.summary,
        evidence=verdict.evidence,
        location=verdict.location,
        per_line=verdict.per_line,
    )


def where_text(method: str | None, route: str | None, default: str = "a request") -> str:
    """``GET /items/{id}``, as the summaries name an endpoint."""
    if route is None:
        return default
    return f"{method} {route}" if method else route


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded as the evidence shows them."""
    return round(seconds * 1000.0, 2)


class FirstNamed:
    """A thing's finding keeps the method, route and line it was first published with.

    A pool-wide verdict names the route and line holding (or waiting for) the most connections at
    the time it is decided; as the load shifts between routes that changes, and each new name would
    be another finding of the same pool. Bounded: beyond ``limit`` things, verdicts pass unchanged."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._first: dict[tuple[Hashable, Any], tuple[str | None, str | None, Location | None]] = {}

    def keep(self, thing: Hashable, verdict: Verdict | None) -> Verdict | None:
        if verdict is None:
            return None
        key = (thing, verdict.evidence.get("reason"))
        first = self._first.get(key)
        if first is None:
            if len(self._first) >= self.limit:
                return verdict
            first = self._first[key] = (verdict.method, verdict.route, verdict.location)
        method, route, location = first
        return dataclasses.replace(verdict, method=method, route=route, location=location)
