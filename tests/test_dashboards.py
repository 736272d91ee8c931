"""The generated Grafana dashboard: not stale, units and data source on every panel, thresholds equal to
the agent's defaults, exemplars on latency panels, and every query valid PromQL over metric names of
docs/metrics.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
sys.path.insert(0, str(ROOT))

from fastapi_doctor import config as agent_config  # noqa: E402

# Standard series a Prometheus target always has, beside the catalogue.
STANDARD = {"up", "target_info", "scrape_duration_seconds"}
STANDARD_PREFIXES = ("process_", "python_")  # prometheus_client's process and platform collectors
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}


def catalogue() -> set[str]:
    """Prometheus names of docs/metrics.md (last column of the table)."""
    names = set()
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[-1].startswith("`"):
            names.add(cells[-1].strip("`"))
    assert len(names) > 20, "could not read the catalogue"
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\boffset\s+-?\w+", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = m.group(0)
        after = text[m.end():].lstrip()
        if after.startswith("(") or name.lower() in _KEYWORDS or name.startswith("$"):
            continue
        if text[max(0, m.start() - 1)] == "$":
            continue
        names.add(name)
    return names


def known(name: str, names: set[str]) -> bool:
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in names or base in names or name in STANDARD or name.startswith(STANDARD_PREFIXES)


def load_dashboards() -> dict[str, dict[str, Any]]:
    files = sorted((DASHBOARDS / "grafana").glob("*.json"))
    assert files, "no generated dashboards"
    return {f.stem: json.loads(f.read_text()) for f in files}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_generated_files_are_not_stale(tmp_path: Path) -> None:
    """`make dashboards` output in a temporary directory equals the committed files, file for file."""
    subprocess.run([sys.executable, "-m", "dashboards.build", "--out", str(tmp_path), "--no-chart"],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    fresh = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    committed = {str(p.relative_to(DASHBOARDS)) for sub in ("grafana", "prometheus")
                 for p in (DASHBOARDS / sub).rglob("*") if p.is_file() and p.suffix in (".json", ".yaml")}
    assert fresh == committed, f"run `make dashboards`: {fresh ^ committed}"
    for rel in sorted(fresh):
        assert (tmp_path / rel).read_text() == (DASHBOARDS / rel).read_text(), f"{rel} is stale: run `make dashboards`"


def test_schema_version_loads_in_grafana_10_and_11() -> None:
    for dashboard in load_dashboards().values():
        # 39 is Grafana 10.4/11.0's schema; newer Grafana 11 releases migrate it when loading.
        assert dashboard["schemaVersion"] == 39
        assert dashboard["uid"] and len(dashboard["uid"]) <= 40
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))


def test_template_variables() -> None:
    for dashboard in load_dashboards().values():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert set(variables) == {"datasource", "job", "instance", "route"}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for name in ("job", "instance", "route"):
            assert variables[name]["type"] == "query"
            assert variables[name]["datasource"]["uid"] == "${datasource}"
            assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        assert "http_route" in variables["route"]["query"]


def test_every_panel_has_a_unit_and_the_datasource_variable() -> None:
    from grafana_foundation_sdk.models import units

    grafana_units = {v for k, v in vars(units).items() if isinstance(v, str) and not k.startswith("_")}
    for dashboard in load_dashboards().values():
        for panel in panels(dashboard):
            unit = panel["fieldConfig"]["defaults"].get("unit")
            assert unit in grafana_units, f"{panel['title']}: unit {unit!r}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                assert target["refId"]


def test_every_queried_metric_is_in_the_catalogue() -> None:
    names = catalogue()
    seen = set()
    for dashboard in load_dashboards().values():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                found = metric_names(target["expr"])
                assert found, f"{panel['title']}: no metric in {target['expr']}"
                unknown = {n for n in found if not known(n, names)}
                assert not unknown, f"{panel['title']}: {unknown} not in docs/metrics.md"
                seen |= found
    assert metric_names('sum by (le) (rate(foo_bucket{a="b"}[5m])) / bar') == {"foo_bucket", "bar"}
    assert not known("fastapi_doctor_made_up_seconds_bucket", names)


def test_rows_cover_every_root_cause() -> None:
    for dashboard in load_dashboards().values():
        rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
        for root_cause in agent_config.ROOT_CAUSES:
            assert any(r.startswith(root_cause + ":") for r in rows), f"no row for {root_cause}"


EXPECTED_THRESHOLDS = {
    # panel title: the agent setting its red line is (in the series' unit)
    "Event-loop lag p50 / p99": ("loop_block_ms", 1 / 1000),
    "Dependency time p50 by dependency": ("slow_dependency_ms", 1 / 1000),
    "Middleware self-time p50 by layer": ("slow_middleware_ms", 1 / 1000),
    "Connection use time p99": ("leak_seconds", 1),
    "Response size by route and encoding (mean)": ("large_response_bytes", 1),
    "SQL statements per request by route (mean)": ("n_plus_one_threshold", 1),
    "Request duration p50 / p99": ("slow_request_ms", 1 / 1000),
}


def test_thresholds_are_the_agents_defaults() -> None:
    dashboard = load_dashboards()["fastapi-doctor-overview"]
    by_title = {p["title"]: p for p in panels(dashboard)}
    for title, (field, scale) in EXPECTED_THRESHOLDS.items():
        steps = by_title[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        expected = agent_config.SETTINGS_BY_FIELD[field].default * scale
        assert [s["value"] for s in steps[1:]] == [pytest.approx(expected)], title
        assert by_title[title]["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"


def test_latency_panels_ask_for_exemplars() -> None:
    latency = 0
    for dashboard in load_dashboards().values():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                if panel["fieldConfig"]["defaults"]["unit"] == "s" and "histogram_quantile" in target["expr"]:
                    latency += 1
                    assert target.get("exemplar") is True, panel["title"]
    assert latency >= 8


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query (Grafana's variables filled in) as a recording rule."""
    rules = []
    for dashboard in load_dashboards().values():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                expr = (target["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h")
                        .replace("$job", ".*").replace("$instance", ".*").replace("$route", ".*"))
                assert "$" not in expr, expr
                rules.append({"record": f"panel:{panel['id']}:{target['refId']}", "expr": expr})
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
