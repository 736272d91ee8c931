"""The fleet table: one row per finding across workers and replicas, merged by ``finding_id``.

Two sources, one shape (``{"service", "sources", "unreachable", "findings": [...]}``, each finding
with the instances that report it, occurrences summed, first and last seen):

* several side servers (``report --url A --url B``: the ports of a prefork server's workers): their
  ``/doctor`` documents merged;
* Prometheus' HTTP API (``report --prometheus URL``): the series of
  :mod:`fastapi_doctor.publish.findings_export` (``fastapi_doctor_finding_info``, ``fastapi_doctor_findings_total``,
  ``fastapi_doctor_finding_last_seen_seconds``) of every target the selector matches.

Sorted by impact: the occurrence rate when Prometheus knows it, then occurrences, then instances.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from fastapi_doctor.findings import RUNBOOK_PATH
from fastapi_doctor.findings import _iso as iso

INFO = "fastapi_doctor_finding_info"
COUNTER = "fastapi_doctor_findings_total"
LAST_SEEN = "fastapi_doctor_finding_last_seen_seconds"
RATE_WINDOW = "5m"
FIRST_SEEN_WINDOW = "1d"  # how far back a finding's first sighting is looked for


class FleetError(Exception):
    pass


def merge_documents(docs: list[tuple[str, dict[str, Any]]], unreachable: list[str] | None = None) -> dict[str, Any]:
    """``/doctor`` documents of several processes (``(url, doc)``) as one fleet document."""
    merged: dict[str, dict[str, Any]] = {}
    for url, doc in docs:
        instance = {"instance": url, "pid": doc.get("pid")}
        for f in doc.get("findings", []):
            row = merged.get(f["id"])
            if row is None:
                merged[f["id"]] = {**f, "instances": [instance]}
                continue
            row["instances"].append(instance)
            row["count"] += f["count"]
            row["first_seen"] = min(row["first_seen"], f["first_seen"])
            if f["last_seen"] > row["last_seen"]:  # the latest summary and evidence
                row.update(last_seen=f["last_seen"], summary=f["summary"], evidence=f["evidence"])
    services = sorted({str(doc.get("service")) for _, doc in docs})
    return {
        "service": ", ".join(services),
        "sources": [url for url, _ in docs],
        "unreachable": unreachable or [],
        "findings": sort_by_impact(list(merged.values())),
    }


def sort_by_impact(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(findings, key=lambda f: (-(f.get("rate") or 0.0), -f["count"], -len(f["instances"]), f["id"]))


# -- Prometheus ------------------------------------------------------------------------------------


def with_selector(metric: str, selector: str | None) -> str:
    """``metric{job="api"}`` from ``{job="api"}`` (or ``job="api"``); the metric alone without one."""
    matchers = (selector or "").strip()
    if matchers.startswith("{") and matchers.endswith("}"):
        matchers = matchers[1:-1].strip()
    return f"{metric}{{{matchers}}}" if matchers else metric


class PrometheusAPI:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector. Raises :class:`FleetError` with a clear message."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_of(exc.read())
            raise FleetError(f"Prometheus at {self.url} answered HTTP {exc.code} to {expr!r}{detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise FleetError(f"cannot reach Prometheus at {self.url}: {getattr(exc, 'reason', exc)}") from exc
        try:
            answer = json.loads(body)
            assert answer["status"] == "success" and answer["data"]["resultType"] == "vector"
            return list(answer["data"]["result"])
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise FleetError(f"{self.url} did not answer as Prometheus' HTTP API does") from exc


def _error_of(body: bytes) -> str:
    try:
        return ": " + str(json.loads(body)["error"])
    except Exception:
        return ""


def from_prometheus(api: PrometheusAPI, selector: str | None = None) -> dict[str, Any]:
    """The fleet document from the findings' series in Prometheus."""
    info = with_selector(INFO, selector)
    counter = with_selector(COUNTER, selector)
    last_seen = with_selector(LAST_SEEN, selector)
    rows: dict[str, dict[str, Any]] = {}
    for series in api.query(info):
        labels = series["metric"]
        finding_id = labels.get("finding_id")
        if not finding_id:
            continue
        row = rows.get(finding_id)
        if row is None:
            row = rows[finding_id] = _row(labels)
        instance = {"instance": labels.get("instance"), "job": labels.get("job")}
        if instance not in row["instances"]:
            row["instances"].append(instance)
    by_id = "sum by (finding_id)"
    for key, expr, cast in (
        ("count", f"{by_id} ({counter})", lambda v: int(round(v))),
        ("rate", f"{by_id} (rate({counter}[{RATE_WINDOW}]))", float),
        ("last_seen", f"max by (finding_id) ({last_seen})", iso),
        ("first_seen", f"min by (finding_id) (min_over_time({last_seen}[{FIRST_SEEN_WINDOW}]))", iso),
    ):
        for series in api.query(expr):
            row = rows.get(series["metric"].get("finding_id", ""))
            if row is not None:
                row[key] = cast(float(series["value"][1]))
    for row in rows.values():
        row["instances"].sort(key=lambda i: (str(i["job"]), str(i["instance"])))
    return {
        "service": selector or "",
        "sources": [api.url],
        "unreachable": [],
        "findings": sort_by_impact(list(rows.values())),
    }


def _row(labels: dict[str, str]) -> dict[str, Any]:
    location = None
    if labels.get("code_file_path"):
        line = labels.get("code_line_number", "")
        location = {"file": labels["code_file_path"], "line": int(line) if line.isdigit() else line,
                    "function": labels.get("code_function_name", "")}
    root_cause = labels.get("root_cause", "")
    return {
        "id": labels["finding_id"],
        "root_cause": root_cause,
        "method": labels.get("http_request_method"),
        "route": labels.get("http_route"),
        "location": location,
        "count": 0,
        "rate": 0.0,
        "first_seen": None,
        "last_seen": None,
        "runbook": RUNBOOK_PATH.format(root_cause=root_cause),
        "instances": [],
    }

