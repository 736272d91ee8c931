"""Rules: each root cause's decision as a function of observations and a clock.

A rule module (one per root cause, listed in :mod:`fastapi_doctor.diagnosis.registry`) takes typed
observations from the signals (no frames, no requests, no threads), applies its thresholds and writes
the summary and the evidence of a :class:`Verdict`. The signal hands the verdict to the findings
(:func:`publish`); the rule is tested without a server, over synthetic observations.

Rules import the kernel only, never a signal (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

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
