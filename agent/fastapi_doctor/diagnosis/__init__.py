"""Rules: each root cause's decision as a function of observations and a clock.

A rule module takes typed observations from its signal (no frames, no requests, no threads), applies its
thresholds and writes the summary and the evidence of a :class:`Verdict`. The signal reports the verdict;
the rule is tested without a server, over synthetic observation streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi_doctor.findings import Location


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decided finding, before the registry merges it with earlier occurrences."""

    root_cause: str
    route: str | None
    summary: str
    location: Location | None
    evidence: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
