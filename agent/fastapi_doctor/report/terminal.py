"""The findings as a terminal table (``fastapi-doctor report``)."""

from __future__ import annotations

import shutil
from typing import Any


def _location(f: dict[str, Any]) -> str:
    loc = f.get("location")
    return f"{loc['file']}:{loc['line']} {loc['function']}" if loc else "-"


def _evidence(f: dict[str, Any], width: int) -> str:
    text = ", ".join(f"{k}={v}" for k, v in f.get("evidence", {}).items())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(doc: dict[str, Any]) -> str:
    findings = doc.get("findings", [])
    header = f"fastapi-doctor — {doc.get('service', '?')} (pid {doc.get('pid', '?')}): {len(findings)} finding(s)"
    if not findings:
        return header + "\nNo finding: nothing the agent measures is hurting this app right now."
    width = max(100, shutil.get_terminal_size((140, 20)).columns)
    rows = [("ROOT CAUSE", "ROUTE", "LOCATION", "COUNT", "SUMMARY")]
    for f in findings:
        rows.append((f["root_cause"], f.get("route") or "-", _location(f), str(f["count"]), f["summary"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [header, ""]
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    lines.append("")
    for f in findings:
        lines.append(f"[{f['root_cause']}] {f.get('route') or '-'}: {_evidence(f, width - 8)}")
        lines.append(f"    runbook: {f['runbook']}")
    return "\n".join(lines)
