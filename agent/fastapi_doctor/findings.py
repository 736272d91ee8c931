"""Findings: what the agent concluded, with the evidence and the line of code.

The rules' verdicts are reported here (``diagnosis.publish``); the server and the report only read. Occurrences with
the same (root_cause, method, route, location) merge into one finding; memory is bounded. The method
is the request's HTTP method: a ``GET`` and a ``POST`` on one route template are different endpoints,
with different code, and never share a finding.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi_doctor.diagnosis.registry import ROOT_CAUSES, RUNBOOK_PATH
from fastapi_doctor.kernel.location import Location

_log = logging.getLogger("fastapi_doctor")


Key = tuple[str, str | None, str | None, Location | None]  # (root_cause, method, route, location)


@dataclass(slots=True)
class Finding:
    root_cause: str
    route: str | None
    summary: str
    evidence: dict[str, Any]
    location: Location | None
    first_seen: float
    last_seen: float
    count: int = 1
    key: Key = field(default=("", None, None, None), repr=False)
    method: str | None = None  # the request's HTTP method, when the finding is about requests

    @property
    def endpoint(self) -> str | None:
        """``GET /items/``: the method and the route template, as a user names an endpoint."""
        return endpoint_text(self.method, self.route)

    @property
    def id(self) -> str:
        return hashlib.blake2s(repr(self.key).encode(), digest_size=6).hexdigest()

    @property
    def runbook(self) -> str:
        return RUNBOOK_PATH.format(root_cause=self.root_cause)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "root_cause": self.root_cause,
            "method": self.method,
            "route": self.route,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "location": self.location.as_dict() if self.location else None,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "count": self.count,
            "runbook": self.runbook,
        }


def endpoint_text(method: str | None, route: str | None) -> str | None:
    if route is None:
        return None
    return f"{method} {route}" if method else route


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Listener = Callable[[Finding, bool], None]


class FindingsRegistry:
    """Bounded store of findings. Thread-safe: detectors report from watchdog threads too."""

    def __init__(self, max_findings: int = 500, clock: Callable[[], float] = time.time) -> None:
        self._max = max_findings
        self._clock = clock
        self._lock = threading.Lock()
        self._findings: OrderedDict[Key, Finding] = OrderedDict()
        self._listeners: list[Listener] = []
        self.evicted = 0

    def add_listener(self, listener: Listener) -> None:
        """``listener(finding, is_new)`` runs after each occurrence (counters, logs, span events)."""
        self._listeners.append(listener)

    def report(
        self,
        root_cause: str,
        *,
        route: str | None,
        summary: str,
        evidence: Mapping[str, Any],
        location: Location | None = None,
        method: str | None = None,
        per_line: bool = False,
    ) -> Finding:
        """``method`` is the HTTP method of the request the finding is about (None: not one request's).
        ``per_line``: one finding per root cause and line, kept on the route it was first reported on."""
        if root_cause not in ROOT_CAUSES:
            raise ValueError(f"unknown root cause {root_cause!r}")
        now = self._clock()
        key = (root_cause, None, None, location) if per_line else (root_cause, method, route, location)
        with self._lock:
            finding = self._findings.get(key)
            is_new = finding is None
            if finding is None:
                finding = Finding(root_cause, route, summary, dict(evidence), location, now, now, 1, key, method)
                self._findings[key] = finding
                while len(self._findings) > self._max:
                    self._findings.popitem(last=False)
                    self.evicted += 1
            else:
                finding.count += 1
                finding.last_seen = now
                finding.summary = summary
                finding.evidence = dict(evidence)
                self._findings.move_to_end(key)
        for listener in self._listeners:
            listener(finding, is_new)
        return finding

    def all(self) -> list[Finding]:
        with self._lock:
            return list(self._findings.values())

    def clear(self) -> None:
        with self._lock:
            self._findings.clear()
            self.evicted = 0


def log_first_occurrence(finding: Finding, is_new: bool) -> None:
    if is_new:
        where = f" at {finding.location}" if finding.location else ""
        route = f" on {finding.endpoint}" if finding.route else ""
        _log.warning("fastapi-doctor finding [%s]%s%s: %s", finding.root_cause, route, where, finding.summary)
