"""The doctor page: charts of the last minutes and the findings by root cause, self-contained HTML
(inline CSS and SVG, no script, no external assets)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from fastapi_doctor.diagnosis.registry import ROOT_CAUSES, TITLES
from fastapi_doctor.findings import endpoint_text


REFRESH = '<meta http-equiv="refresh" content="10">'

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b9c0cc}main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:0 0 16px;padding:12px 16px}
h2{font-size:16px;margin:0 0 8px}.none{color:#4a7a3a}.count{color:#6b7380;font-weight:normal}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:6px 8px;border-top:1px solid #eef0f3;vertical-align:top}
td{overflow-wrap:anywhere}th{font-weight:600;color:#4b5563;border-top:none}code{background:#f1f3f6;padding:1px 4px;border-radius:3px}
.rc{display:inline-block;padding:1px 6px;border-radius:3px;background:#fde8e8;color:#9b1c1c;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:12px}
figure.chart{margin:0}figcaption{font-size:13px;color:#4b5563;margin:0 0 4px}figcaption b{color:#1d2330}
svg.spark{width:100%;height:auto;background:#fbfcfd;border:1px solid #eef0f3;border-radius:4px}
svg.spark polyline{fill:none;stroke:#2563eb;stroke-width:1.5;vector-effect:non-scaling-stroke}
svg.spark polyline.limit{stroke:#9ca3af;stroke-dasharray:4 3}svg.spark circle{fill:#2563eb}
svg.spark text{font-size:9px;fill:#6b7380}.nodata{fill:#9ca3af;font-size:11px}
header p.off{color:#fde68a}
"""


def _evidence(evidence: dict[str, Any]) -> str:
    return "<br>".join(f"{escape(str(k))}: <code>{escape(str(v))}</code>" for k, v in evidence.items())


def render_findings(findings: list[dict[str, Any]], diagnosed: bool = True) -> str:
    parts = []
    # With diagnosis off (an unsupported FastAPI) an empty cause is not known to be healthy.
    empty = '<p class="none">No finding.</p>' if diagnosed else "<p>Not diagnosed (diagnosis is off).</p>"
    for root_cause in ROOT_CAUSES:
        mine = [f for f in findings if f["root_cause"] == root_cause]
        title = escape(TITLES.get(root_cause, root_cause))
        if not mine:
            parts.append(
                f'<section class="root-cause" data-root-cause="{root_cause}"><h2>{title} '
                f'<span class="count">({root_cause})</span></h2>{empty}</section>'
            )
            continue
        rows = []
        for f in mine:
            loc = f.get("location")
            where = f"{loc['file']}:{loc['line']} in {loc['function']}" if loc else "—"
            route = endpoint_text(f.get("method"), f["route"]) or "—"
            rows.append(
                f'<tr class="finding" data-id="{escape(f["id"])}"><td>{escape(f["summary"])}</td>'
                f'<td><code>{escape(route)}</code></td><td><code>{escape(where)}</code></td>'
                f'<td>{_evidence(f["evidence"])}</td><td>{f["count"]}</td>'
                f'<td><a href="/runbooks/{escape(f["root_cause"])}.md">runbook</a></td></tr>'
            )
        parts.append(
            f'<section class="root-cause" data-root-cause="{root_cause}"><h2>{title} '
            f'<span class="rc">{root_cause}</span> <span class="count">{len(mine)} finding(s)</span></h2>'
            "<table><tr><th>Summary</th><th>Route</th><th>Location</th><th>Evidence</th><th>Count</th>"
            "<th>Fix</th></tr>" + "".join(rows) + "</table></section>"
        )
    return "".join(parts)


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        for step, suffix in ((1 << 20, "MiB"), (1 << 10, "KiB")):
            if value >= step:
                return f"{value / step:.1f} {suffix}"
        return f"{value:.0f} B"
    if value >= 100 or value == int(value):
        return f"{value:.0f} {unit}"
    return f"{value:.2g} {unit}" if value < 1 else f"{value:.1f} {unit}"


def _segments(ts: list[float], values: list[float | None]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive points with a value: a missing value is a gap, not a zero."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for t, v in zip(ts, values, strict=False):
        if v is None:
            if current:
                runs.append(current)
                current = []
        else:
            current.append((t, v))
    if current:
        runs.append(current)
    return runs


_W, _H, _PAD = 300.0, 90.0, 4.0


def _chart(key: str, title: str, unit: str, history: dict[str, Any], companion: str | None) -> str:
    ts: list[float] = list(history.get("t") or [])
    values: list[float | None] = list(history.get(key) or [])
    extra: list[float | None] = list(history.get(companion) or []) if companion else []
    known = [v for v in values if v is not None]
    head = f'<figure class="chart" data-series="{key}" data-points="{len(known)}">'
    if not ts or not known:
        return (
            f"{head}<figcaption>{escape(title)}</figcaption>"
            f'<svg class="spark" viewBox="0 0 {_W:.0f} {_H:.0f}" role="img" aria-label="{escape(title)}: no data">'
            f'<text class="nodata" x="{_W / 2:.0f}" y="{_H / 2:.0f}" text-anchor="middle">'
            "no data yet</text></svg></figure>"
        )
    top = max([*known, *(v for v in extra if v is not None)]) or 1.0
    top *= 1.1
    t0, t1 = ts[0], ts[-1]
    span = max(t1 - t0, 1.0)

    def xy(t: float, v: float) -> str:
        x = _PAD + (_W - 2 * _PAD) * (t - t0) / span
        y = _H - _PAD - (_H - 2 * _PAD - 10) * v / top
        return f"{x:.1f},{y:.1f}"

    shapes = []
    if extra:
        for run in _segments(ts, extra):
            shapes.append(f'<polyline class="limit" points="{" ".join(xy(t, v) for t, v in run)}"/>')
    for run in _segments(ts, values):
        if len(run) == 1:
            x, y = xy(*run[0]).split(",")
            shapes.append(f'<circle cx="{x}" cy="{y}" r="1.8"/>')
        else:
            shapes.append(f'<polyline class="series" points="{" ".join(xy(t, v) for t, v in run)}"/>')
    last = next((v for v in reversed(values) if v is not None), None)
    minutes = span / 60
    caption = (
        f"{escape(title)}: <b>{escape(_fmt(last, unit)) if last is not None else '—'}</b> now, "
        f"max {escape(_fmt(max(known), unit))}"
    )
    if extra and any(v is not None for v in extra):
        caption += f" (limit {escape(_fmt(max(v for v in extra if v is not None), unit))}, dashed)"
    return (
        f"{head}<figcaption>{caption}</figcaption>"
        f'<svg class="spark" viewBox="0 0 {_W:.0f} {_H:.0f}" role="img" '
        f'aria-label="{escape(title)}">'
        f'<text x="{_PAD:.0f}" y="10">{escape(_fmt(top, unit))}</text>'
        f'<text x="{_W - _PAD:.0f}" y="10" text-anchor="end">last {minutes:.1f} min</text>'
        + "".join(shapes)
        + "</svg></figure>"
    )


def render_charts(history: dict[str, Any] | None) -> str:
    """Small inline-SVG charts of the last minutes (from :mod:`fastapi_doctor.publish.history`)."""
    from fastapi_doctor.publish.history import COMPANIONS, SERIES

    if history is None:
        return ""
    charts = "".join(_chart(key, title, unit, history, COMPANIONS.get(key)) for key, title, unit in SERIES)
    return (
        '<section class="history"><h2>Last minutes <span class="count">(one point every '
        f'{escape(str(history.get("interval_s", "")))} s)</span></h2><div class="charts">{charts}</div></section>'
    )


def render_stalls(stalls: dict[str, Any] | None) -> str:
    """Lines for what made the event loop late that is not the app's code (``doc["stalls"]``)."""
    lines = []
    paused = (stalls or {}).get("paused")
    if paused:
        line = (
            f'The process was paused {paused["episodes"]} time(s), {paused["seconds"]:.2f} s in all: the event loop '
            "was late because nothing in the process ran (stopped, CPU-throttled or not scheduled), not because "
            "of the app's code."
        )
        if paused.get("throttled_periods"):
            line += (
                f' Its cgroup was CPU-throttled {paused["throttled_periods"]} time(s), '
                f'{paused["throttled_seconds"]:.2f} s: raise the CPU limit or lower the load per replica.'
            )
        lines.append(f'<li data-stall="paused">{escape(line)}</li>')
    agent = (stalls or {}).get("agent")
    if agent:
        line = (
            f'The agent and OpenTelemetry blocked the event loop {agent["episodes"]} time(s), {agent["seconds"]:.2f} s '
            f'({agent["share"]:.1%} of the time, over its budget of {agent["budget_share"]:.0%}): lower the traces '
            "sampled (OTEL_TRACES_SAMPLER_ARG, FASTAPI_DOCTOR_TRACES_PER_SECOND)."
        )
        lines.append(f'<li data-stall="agent">{escape(line)}</li>')
    if not lines:
        return ""
    return '<section class="stalls"><h2>Not the app\'s code</h2><ul>' + "".join(lines) + "</ul></section>"


def _diagnosis_off(doc: dict[str, Any]) -> str:
    diagnosis = doc.get("diagnosis") or {}
    if diagnosis.get("on", True):
        return ""
    return f'<p class="off"><strong>Diagnosis is off:</strong> {escape(str(diagnosis.get("reason", "")))}</p>'


def render_siblings(ports: Sequence[int], host: str) -> str:
    """Links to the pages of the other workers of a prefork server, on the host the page was read from."""
    if not ports:
        return ""
    links = " ".join(f'<a data-port="{p}" href="http://{escape(host)}:{p}/">:{p}</a>' for p in ports)
    return f"<p>Other workers of this server: {links}</p>"


def render_page(
    doc: dict[str, Any], history: dict[str, Any] | None = None, siblings: Sequence[int] = (), host: str = "127.0.0.1"
) -> str:
    findings = doc.get("findings", [])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>fastapi-doctor — {escape(str(doc.get('service', '')))}</title>"
        f'{REFRESH}<style>{_CSS}</style></head><body>'
        f"<header><h1>fastapi-doctor — {escape(str(doc.get('service', '')))}</h1>"
        f"<p>{len(findings)} finding(s) · generated {escape(str(doc.get('generated_at', '')))} · "
        f"pid {escape(str(doc.get('pid', '')))}</p>{render_siblings(siblings, host)}{_diagnosis_off(doc)}</header><main>"
        f"{render_charts(history)}{render_stalls(doc.get('stalls'))}"
        f"{render_findings(findings, (doc.get('diagnosis') or {}).get('on', True))}"
        "</main></body></html>"
    )
