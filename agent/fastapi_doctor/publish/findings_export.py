"""Findings as telemetry, so that they survive aggregation across replicas and workers.

Fed by the findings store (:class:`fastapi_doctor.findings.FindingsRegistry`), never by a signal:

* ``fastapi_doctor_finding_info`` (an info-style gauge, value 1): one series per finding the store
  holds, labelled with its identity and location (``root_cause``, ``http_request_method``,
  ``http_route``, ``code_file_path``, ``code_line_number``, ``code_function_name``, ``finding_id``).
  Read at collection time from the store, so it is bounded by ``FASTAPI_DOCTOR_MAX_FINDINGS`` and an
  evicted finding's series goes with it.
* ``fastapi_doctor_finding_last_seen_seconds{finding_id}``: when this process last saw it.
* ``fastapi_doctor_findings_total``: occurrences, with the same ``finding_id`` (and the root cause,
  route and method the alerts sum by).
* an OpenTelemetry log event ``fastapi_doctor.finding`` per new finding, and when a finding recurs
  after ``FASTAPI_DOCTOR_LOG_REPEAT_SECONDS`` without an occurrence: the same attributes, the summary
  as body, the evidence as ``fastapi_doctor.evidence.*`` attributes. It goes through the agent's OTLP
  logs pipeline (exported only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set), so a Collector can route
  it to any log backend.

``finding_id`` is derived from the finding's key (root cause, method, route, file, line, function), so
every worker and replica running the same code names the same finding with the same id, and a fleet
aggregates by it. The attribute names are OpenTelemetry's semantic conventions (``code.*``, ``http.*``)
where one exists; Prometheus' exporter turns their dots into underscores.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

from fastapi_doctor import containment
from fastapi_doctor.findings import Finding, FindingsRegistry

FINDING_ID = "finding_id"
ROOT_CAUSE = "root_cause"
EVENT_NAME = "fastapi_doctor.finding"
EVIDENCE_PREFIX = "fastapi_doctor.evidence."
_SEVERITY_WARN = 13  # SeverityNumber.WARN


def attributes(finding: Finding) -> dict[str, str | int]:
    """The finding's identity and location as OpenTelemetry attributes (those it has)."""
    attrs: dict[str, str | int] = {ROOT_CAUSE: finding.root_cause, FINDING_ID: finding.id}
    if finding.method is not None:
        attrs["http.request.method"] = finding.method
    if finding.route is not None:
        attrs["http.route"] = finding.route
    location = finding.location
    if location is not None:
        attrs["code.file.path"] = location.file
        attrs["code.line.number"] = location.line
        attrs["code.function.name"] = location.function
    return attrs


def counter_attributes(finding: Finding) -> dict[str, str | int]:
    """The occurrence counter's: what the alerts sum by (root cause, route, method), and the id that
    joins it to the info series; the location is on the info series only."""
    return {k: v for k, v in attributes(finding).items() if not k.startswith("code.")}


def evidence_attributes(evidence: dict[str, Any]) -> dict[str, Any]:
    """Evidence values as log attributes: scalars and lists of scalars as they are, the rest as JSON."""
    out: dict[str, Any] = {}
    for name, value in evidence.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            out[EVIDENCE_PREFIX + name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float)) for v in value) \
                and len({type(v) for v in value}) <= 1:
            out[EVIDENCE_PREFIX + name] = list(value)
        else:
            out[EVIDENCE_PREFIX + name] = json.dumps(value, default=str, sort_keys=True)
    return out


class FindingsExport:
    """Publishes a findings store's findings as metrics and log events (one per process)."""

    def __init__(
        self,
        findings: FindingsRegistry,
        meter: Any,
        *,
        max_findings: int,
        logger_provider: Any = None,
        quiet_s: float = 60.0,
    ) -> None:
        from opentelemetry.metrics import Observation

        self._findings = findings
        self._observation = Observation
        self._quiet_s = quiet_s
        self._max = max_findings
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # finding_id -> last occurrence, to tell a quiet period
        self._counter = meter.create_counter(
            "fastapi_doctor.findings",
            unit="{finding}",
            description="Occurrences of findings, by root cause, route, request method and finding_id.",
        )
        meter.create_observable_gauge(
            "fastapi_doctor.finding.info",
            callbacks=[self._info],
            description="1 for each finding this process holds, labelled with its identity and code location.",
        )
        meter.create_observable_gauge(
            "fastapi_doctor.finding.last_seen",
            callbacks=[self._last_seen],
            unit="s",
            description="When this process last saw the finding (Unix time), by finding_id.",
        )
        self._logger = logger_provider.get_logger("fastapi_doctor.findings") if logger_provider is not None else None

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    # -- collection time: read the store ---------------------------------------------------------

    def _info(self, _options: Any) -> Iterable[Any]:
        return [self._observation(1, attributes(f)) for f in self._findings.all()]

    def _last_seen(self, _options: Any) -> Iterable[Any]:
        return [self._observation(f.last_seen, {FINDING_ID: f.id}) for f in self._findings.all()]

    # -- each occurrence (a FindingsRegistry listener) --------------------------------------------

    def on_finding(self, finding: Finding, is_new: bool) -> None:
        self._counter.add(1, counter_attributes(finding))
        if self._logger is not None and self._event_due(finding, is_new):
            try:
                self._emit(finding)
            except Exception as exc:
                containment.report("finding log event", exc)

    def _event_due(self, finding: Finding, is_new: bool) -> bool:
        """New, or recurring after a quiet period. Bounded: ids no longer in the store are forgotten."""
        now = finding.last_seen
        with self._lock:
            previous = self._seen.get(finding.id)
            self._seen[finding.id] = now
            if len(self._seen) > 2 * self._max:
                held = {f.id for f in self._findings.all()}
                self._seen = {k: v for k, v in self._seen.items() if k in held}
        return is_new or previous is None or now - previous >= self._quiet_s

    def _emit(self, finding: Finding) -> None:
        attrs: dict[str, Any] = {
            **attributes(finding),
            "fastapi_doctor.finding.count": finding.count,
            **evidence_attributes(finding.evidence),
        }
        self._logger.emit(
            timestamp=int(finding.last_seen * 1e9),
            observed_timestamp=time.time_ns(),
            severity_number=_severity(),
            severity_text="WARN",
            body=finding.summary,
            attributes=attrs,
            event_name=EVENT_NAME,
        )


def _severity() -> Any:
    from opentelemetry._logs import SeverityNumber

    return SeverityNumber(_SEVERITY_WARN)
