"""The doctor page: findings by root cause, self-contained HTML (inline CSS, no external assets)."""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi_doctor.config import ROOT_CAUSES

TITLES = {
    "blocking_io": "Blocking call in async code",
    "dependency_rebuild": "Dependencies rebuilt per request",
    "pool_leak": "Connection leaks, bad pooling",
    "slow_middleware": "Heavy middleware",
    "large_payload": "Large uncompressed responses",
    "n_plus_one": "N+1 queries",
}

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b9c0cc}main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:0 0 16px;padding:12px 16px}
h2{font-size:16px;margin:0 0 8px}.none{color:#4a7a3a}.count{color:#6b7380;font-weight:normal}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:6px 8px;border-top:1px solid #eef0f3;vertical-align:top}
th{font-weight:600;color:#4b5563;border-top:none}code{background:#f1f3f6;padding:1px 4px;border-radius:3px}
.rc{display:inline-block;padding:1px 6px;border-radius:3px;background:#fde8e8;color:#9b1c1c;font-size:12px}
"""


def _evidence(evidence: dict[str, Any]) -> str:
    return "<br>".join(f"{escape(str(k))}: <code>{escape(str(v))}</code>" for k, v in evidence.items())


def render_findings(findings: list[dict[str, Any]]) -> str:
    parts = []
    for root_cause in ROOT_CAUSES:
        mine = [f for f in findings if f["root_cause"] == root_cause]
        title = escape(TITLES.get(root_cause, root_cause))
        if not mine:
            parts.append(
                f'<section class="root-cause" data-root-cause="{root_cause}"><h2>{title} '
                f'<span class="count">({root_cause})</span></h2><p class="none">No finding.</p></section>'
            )
            continue
        rows = []
        for f in mine:
            loc = f.get("location")
            where = f"{loc['file']}:{loc['line']} in {loc['function']}" if loc else "—"
            rows.append(
                f'<tr class="finding" data-id="{escape(f["id"])}"><td>{escape(f["summary"])}</td>'
                f'<td><code>{escape(f["route"] or "—")}</code></td><td><code>{escape(where)}</code></td>'
                f'<td>{_evidence(f["evidence"])}</td><td>{f["count"]}</td>'
                f'<td><a href="{escape(f["runbook"])}">runbook</a></td></tr>'
            )
        parts.append(
            f'<section class="root-cause" data-root-cause="{root_cause}"><h2>{title} '
            f'<span class="rc">{root_cause}</span> <span class="count">{len(mine)} finding(s)</span></h2>'
            "<table><tr><th>Summary</th><th>Route</th><th>Location</th><th>Evidence</th><th>Count</th>"
            "<th>Fix</th></tr>" + "".join(rows) + "</table></section>"
        )
    return "".join(parts)


def render_page(doc: dict[str, Any], charts: str = "") -> str:
    findings = doc.get("findings", [])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>fastapi-doctor — {escape(str(doc.get('service', '')))}</title>"
        f'<meta http-equiv="refresh" content="10"><style>{_CSS}</style></head><body>'
        f"<header><h1>fastapi-doctor — {escape(str(doc.get('service', '')))}</h1>"
        f"<p>{len(findings)} finding(s) · generated {escape(str(doc.get('generated_at', '')))} · "
        f"pid {escape(str(doc.get('pid', '')))}</p></header><main>"
        f"{charts}{render_findings(findings)}</main></body></html>"
    )
