"""The findings as text for a terminal: the ``fastapi-doctor report`` table and one finding's block."""

from __future__ import annotations

import shutil
from typing import Any

from fastapi_doctor.findings import endpoint_text


def route_text(f: dict[str, Any]) -> str:
    """``GET /items/`` (the method and the route template), or ``-`` for a finding with no route."""
    return endpoint_text(f.get("method"), f.get("route")) or "-"


def location_text(f: dict[str, Any]) -> str:
    loc = f.get("location")
    return f"{loc['file']}:{loc['line']} in {loc['function']}" if loc else "-"


def evidence_text(f: dict[str, Any], width: int | None = None) -> str:
    text = ", ".join(f"{k}={_short(v)}" for k, v in f.get("evidence", {}).items())
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 120 else text[:119] + "…"


def _location(f: dict[str, Any]) -> str:
    loc = f.get("location")
    return f"{loc['file']}:{loc['line']} {loc['function']}" if loc else "-"


def render_table(doc: dict[str, Any]) -> str:
    findings = doc.get("findings", [])
    header = f"fastapi-doctor — {doc.get('service', '?')} (pid {doc.get('pid', '?')}): {len(findings)} finding(s)"
    diagnosis = doc.get("diagnosis") or {}
    if not diagnosis.get("on", True):
        header += f"\nDiagnosis is off: {diagnosis.get('reason', '')}"
    if not findings:
        if diagnosis.get("on", True):
            header += "\nNo finding: nothing the agent measures is hurting this app right now."
        return header
    width = max(100, shutil.get_terminal_size((140, 20)).columns)
    rows = [("ROOT CAUSE", "ROUTE", "LOCATION", "COUNT", "SUMMARY")]
    for f in findings:
        rows.append((f["root_cause"], route_text(f), _location(f), str(f["count"]), f["summary"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [header, ""]
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    lines.append("")
    for f in findings:
        lines.append(f"[{f['root_cause']}] {route_text(f)}: {evidence_text(f, width - 8)}")
        lines.append(f"    runbook: {f['runbook']}")
    return "\n".join(lines)


def render_fleet(doc: dict[str, Any]) -> str:
    """The fleet table (``report --url A --url B``, ``report --prometheus``): a finding once, with the
    instances that report it."""
    findings = doc.get("findings", [])
    sources = ", ".join(doc.get("sources", []))
    header = f"fastapi-doctor fleet — {sources}: {len(findings)} finding(s)"
    for url in doc.get("unreachable", []):
        header += f"\nunreachable: {url}"
    if not findings:
        return header + "\nNo finding reported."
    with_rate = any("rate" in f for f in findings)
    columns = ("ROOT CAUSE", "ROUTE", "LOCATION", "INSTANCES", "COUNT", *(("RATE/S",) if with_rate else ()),
               "FIRST SEEN", "LAST SEEN")
    rows = [
        (f["root_cause"], route_text(f), _location(f), str(len(f["instances"])), str(f["count"]),
         *((f"{f.get('rate') or 0.0:.3g}",) if with_rate else ()), f.get("first_seen") or "-", f.get("last_seen") or "-")
        for f in findings
    ]
    lines = [header, "", render_rows(columns, rows, indent=""), ""]
    for f in findings:
        lines.append(f"[{f['root_cause']}] {route_text(f)} ({f['id']}): " + ", ".join(_instance(i) for i in f["instances"]))
        lines.append(f"    runbook: {f['runbook']}")
    return "\n".join(lines)


def _instance(i: dict[str, Any]) -> str:
    return f"{i['instance']} (pid {i['pid']})" if i.get("pid") is not None else str(i["instance"])


def render_finding(
    f: dict[str, Any], fix: str | None = None, runbook_notes: list[str] | None = None, indent: str = "    "
) -> str:
    """One finding as a block: where, evidence, summary, the fix and the runbook's fixes when given."""
    width = max(60, shutil.get_terminal_size((120, 20)).columns - len(indent) - 12)
    rows = [
        ("route", route_text(f)),
        ("where", location_text(f)),
        ("evidence", evidence_text(f, width)),
        ("summary", f.get("summary", "")),
        ("seen", f"{f.get('count', 1)} time(s)"),
    ]
    if fix:
        rows.append(("fix", fix))
    rows.append(("runbook", f.get("runbook", "")))
    for note in runbook_notes or ():
        rows.append(("", f"- {note}"))
    return "\n".join(f"{indent}{name:<9} {value}" for name, value in rows)


def render_rows(header: tuple[str, ...], rows: list[tuple[str, ...]], indent: str = "  ") -> str:
    """A plain aligned table."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = [indent + "  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip()]
    out.append(indent + "  ".join("-" * w for w in widths))
    for r in rows:
        out.append(indent + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(out)
