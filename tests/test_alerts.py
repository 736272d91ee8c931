"""The generated alert rules, checked with the real promtool: `check rules` clean, and `test rules`
firing on each pathology's series on both sides of `for:` and silent on the healthy series and on
every other pathology's series."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "dashboards" / "prometheus"
sys.path.insert(0, str(ROOT))

from fastapi_doctor import config as agent_config  # noqa: E402
from test_dashboards import catalogue, known, metric_names  # noqa: E402

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def rules() -> list[tuple[str, dict[str, Any]]]:
    groups = yaml.safe_load((PROM / "alerts.yaml").read_text())["groups"]
    return [(g["name"], r) for g in groups for r in g["rules"]]


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules_is_clean() -> None:
    result = promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    files = sorted(p.name for p in (PROM / "tests").glob("*.yaml"))
    assert files == sorted(["healthy.yaml", *(f"{rc}.yaml" for rc in agent_config.ROOT_CAUSES)])
    result = promtool("test", "rules", *(f"tests/{f}" for f in files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files)


def test_unit_tests_cover_every_alert_in_every_scenario() -> None:
    """Each scenario's test names every alert: its own firing (and silent one step before), the others silent."""
    names = {r["alert"] for _, r in rules()}
    fired_somewhere = set()
    for path in (PROM / "tests").glob("*.yaml"):
        test = yaml.safe_load(path.read_text())["tests"][0]
        checked = {t["alertname"] for t in test["alert_rule_test"]}
        assert checked == names, f"{path.name} does not check {names - checked}"
        firing = {t["alertname"] for t in test["alert_rule_test"] if t["exp_alerts"]}
        fired_somewhere |= firing
        scenario = path.stem
        root_causes = {r["labels"]["root_cause"] for _, r in rules() if r["alert"] in firing}
        assert root_causes == (set() if scenario == "healthy" else {scenario}), path.name
        for alert in firing:  # both sides of `for:`
            times = sorted((_seconds(t["eval_time"]), bool(t["exp_alerts"]))
                           for t in test["alert_rule_test"] if t["alertname"] == alert)
            assert [f for _, f in times] == [False, True], (path.name, alert, times)
    assert fired_somewhere == names, f"alerts no scenario fires: {names - fired_somewhere}"


def test_every_alert_is_labelled_annotated_and_linked() -> None:
    from dashboards.config import DEFAULT

    for group, rule in rules():
        root_cause = rule["labels"]["root_cause"]
        assert group == f"fastapi-doctor.{root_cause}"
        assert root_cause in agent_config.ROOT_CAUSES
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        assert "$value" in annotations["description"], rule["alert"]
        assert "{{ $labels." in annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == DEFAULT.runbook_url(root_cause)
        relative = annotations["runbook_url"].removeprefix(DEFAULT.runbook_base_url + "/")
        assert (ROOT / relative).is_file(), f"{relative} does not exist"


def test_each_root_cause_has_alerts_on_its_signals_not_only_on_findings() -> None:
    from dashboards import alerts

    names = catalogue()
    # A rebuild's evidence (the object built inside a request, where) is seen by the agent's rule
    # alone; no series carries it, and its duration is no evidence of one.
    for root_cause in set(alerts.BUILDERS) - {"dependency_rebuild"}:
        exprs = [r["expr"] for _, r in rules() if r["labels"]["root_cause"] == root_cause]
        assert any("fastapi_doctor_findings_total" not in e for e in exprs), root_cause
    # A root cause without a builder (a new rule module) still gets the alert on its findings.
    for root_cause in set(agent_config.ROOT_CAUSES) - set(alerts.BUILDERS):
        assert [r["alert"] for _, r in rules() if r["labels"]["root_cause"] == root_cause] == [
            alerts.findings_alert_name(root_cause)]
    for _, rule in rules():
        found = metric_names(rule["expr"])
        assert found and all(known(n, names) for n in found), (rule["alert"], found)


def test_thresholds_are_the_agents_defaults() -> None:
    by_name = {r["alert"]: r["expr"] for _, r in rules()}
    d = {s.field: s.default for s in agent_config.SETTINGS}

    def threshold(alert: str) -> float:
        m = re.search(r"\)\s*(>=|>)\s*([0-9.e+-]+)", by_name[alert])  # the first comparison
        assert m, by_name[alert]
        return float(m.group(2))

    assert threshold("FastAPIDoctorEventLoopLagHigh") == pytest.approx(d["loop_block_ms"] / 1000)
    assert threshold("FastAPIDoctorSlowMiddleware") == pytest.approx(d["slow_middleware_ms"] / 1000)
    assert threshold("FastAPIDoctorConnectionsHeldTooLong") == pytest.approx(d["leak_seconds"])
    assert threshold("FastAPIDoctorLargeUncompressedResponses") == pytest.approx(d["large_response_bytes"])
    assert threshold("FastAPIDoctorNPlusOneQueries") == pytest.approx(d["n_plus_one_threshold"])
    # Growth of the tasks alive is the value; the age past the limit is the threshold.
    oldest = re.search(r"oldest_age_seconds(?:\{[^}]*\})?\)\s*>\s*([0-9.e+-]+)", by_name["FastAPIDoctorTasksPilingUp"])
    assert oldest and float(oldest.group(1)) == pytest.approx(d["task_leak_seconds"])


def test_promtool_tests_fail_when_an_alert_is_wrong(tmp_path: Path) -> None:
    """The unit tests can fail: rules whose threshold sits above the pathology's figure miss it, and rules
    whose threshold sits below the healthy figure fire on the healthy series."""
    import dataclasses

    from dashboards import alerts, build, pathologies
    from dashboards.config import DEFAULT

    # The expected alerts come from the real thresholds; the rules under test from the altered ones.
    tests = pathologies.promtool_tests(DEFAULT)
    for name, altered in (("too-high", dataclasses.replace(DEFAULT.thresholds, n_plus_one_statements=52)),
                          ("too-low", dataclasses.replace(DEFAULT.thresholds, n_plus_one_statements=1))):
        out = tmp_path / name
        (out / "tests").mkdir(parents=True)
        (out / "alerts.yaml").write_text(build.dump_yaml(alerts.rule_groups(DEFAULT.replace(thresholds=altered))))
        for scenario, test in tests.items():
            (out / "tests" / f"{scenario}.yaml").write_text(build.dump_yaml(test))
        result = promtool("test", "rules", *(f"tests/{s}.yaml" for s in tests), cwd=out)
        assert result.returncode != 0, result.stdout
        failed = set(re.findall(r"Unit Testing:\s+tests/(\w+)\.yaml\s*\n\s*FAILED", result.stdout + result.stderr))
        failed |= {s for s in tests if f"name: {s}," in result.stdout + result.stderr}
        # Too low: every scenario's healthy routes run a statement or two per request; the N+1 alert
        # fires on all of them.
        expected = {"n_plus_one"} if name == "too-high" else set(tests)
        assert failed == expected, (name, failed, result.stdout)


def test_runbook_links_come_from_one_configurable_pattern(tmp_path: Path) -> None:
    from dashboards import alerts
    from dashboards.config import DEFAULT

    cfg = DEFAULT.replace(runbook_base_url="https://wiki.example.com/sre/", runbook_url_pattern="{base}/{root_cause}")
    for group in alerts.rule_groups(cfg)["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["runbook_url"] == "https://wiki.example.com/sre/" + rule["labels"]["root_cause"]
