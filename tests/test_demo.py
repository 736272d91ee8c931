"""``fastapi-doctor demo``, what ``make demo`` runs: the patient under the agent in a real server, every
scenario's root cause found on its sick route at the line of code, nothing on the healthy twins."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from harness import BIN

from fastapi_doctor_demo.scenarios import BY_ROOT_CAUSE, SCENARIOS

PACKAGE_PARENT = Path(__file__).resolve().parent.parent / "agent"

def run_demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary = tmp_path / "summary.json"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTAPI_DOCTOR_", "OTEL_"))}
    full_env.update(env or {})
    result = subprocess.run(
        [str(BIN / "fastapi-doctor"), "demo", "--quick", "--summary", str(summary), "--report", "report.html", *args],
        cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=170,
    )
    assert summary.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(summary.read_text())


def _function_of(file: Path, line: int) -> str:
    """The innermost def/class chain enclosing ``line`` (a qualified name as Python gives it)."""
    import ast

    tree = ast.parse(file.read_text())
    best: list[str] = []

    def visit(node: ast.AST, chain: list[str]) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                if start <= line <= (child.end_lineno or child.lineno):
                    here = [*chain, child.name]
                    if not isinstance(child, ast.ClassDef):
                        best = here
                    visit(child, here)

    visit(tree, [])
    return ".".join(best)


def test_demo_finds_every_scenario_at_its_line_and_nothing_else(tmp_path):
    result, summary = run_demo(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-3000:]
    assert summary["ok"] is True and summary["unexpected"] == []
    # Every detector a scenario needs runs: no scenario passes by being skipped.
    assert all(s["covered"] for s in summary["scenarios"])
    assert [s["root_cause"] for s in summary["scenarios"]] == [s.root_cause for s in SCENARIOS]
    assert summary["seconds"] < 120

    for scenario in summary["scenarios"]:
        root_cause = scenario["root_cause"]
        assert scenario["errors"] == [], scenario["errors"][:3]
        assert scenario["found"], root_cause
        # The function holding the line each finding must name (what a user opens to fix it), and its file.
        culprits = BY_ROOT_CAUSE[root_cause].culprit_files
        assert culprits, root_cause
        for finding in scenario["found"]:
            assert finding["route"] == scenario["route"] or scenario["route"] is None
            loc = finding["location"]
            assert loc["function"] in culprits, (root_cause, loc)
            assert loc["file"] == culprits[loc["function"]], (root_cause, loc)
            # The line is real and inside the function the finding names.
            assert _function_of(PACKAGE_PARENT / loc["file"], loc["line"]) == loc["function"], loc
        assert f"FOUND {root_cause}" in out
    blocking = next(s for s in summary["scenarios"] if s["root_cause"] == "blocking_io")
    assert blocking["found"][0]["evidence"]["call"] == "urllib.request.urlopen"

    # The diagnosis as printed: the table, the fix, the runbook, the saved report.
    for s in SCENARIOS:
        assert re.search(rf"^  {s.root_cause}\s+{re.escape(s.route or '(any route)')}\s+found\s+fastapi_doctor_demo/\S+:\d+\s+clean$",
                         out, re.M), s.root_cause
        assert f"fix       {s.fix}" in out
        assert f"runbook   docs/runbooks/{s.root_cause}.md" in out
    assert "no unexpected finding" in out
    report = tmp_path / "report.html"
    assert f"HTML report: {report}" in out
    page = report.read_text()
    for scenario in summary["scenarios"]:
        for finding in scenario["found"]:
            assert f'data-id="{finding["id"]}"' in page
    assert 'http-equiv="refresh"' not in page  # the saved copy does not reload a server that is gone
    assert re.search(r'data-series="request_rate" data-points="[1-9]', page)


def test_demo_fails_when_an_expected_finding_is_missing(tmp_path):
    result, summary = run_demo(tmp_path, "--only", "n_plus_one", "--only", "blocking_io",
                               env={"FASTAPI_DOCTOR_DISABLED_DETECTORS": "db"})
    assert result.returncode == 1
    assert summary["ok"] is False
    by_cause = {s["root_cause"]: s for s in summary["scenarios"]}
    assert by_cause["blocking_io"]["found"] and not by_cause["n_plus_one"]["found"]
    assert "MISSING: no db detector runs in this agent" in result.stdout
    assert "1 missing, 0 unexpected" in result.stdout


def test_demo_fails_on_a_finding_on_a_healthy_twin(tmp_path):
    # With a threshold of one statement, the healthy twin's single query is an "N+1" too.
    result, summary = run_demo(tmp_path, "--only", "n_plus_one", env={"FASTAPI_DOCTOR_N_PLUS_ONE_THRESHOLD": "1"})
    assert result.returncode == 1
    twins = [f for f in summary["unexpected"] if f["route"] == "/v2/customers/{customer_id}/orders"]
    assert twins and all(f["root_cause"] == "n_plus_one" for f in twins)
    assert re.search(r"^  n_plus_one\s+/customers/\{customer_id\}/orders\s+found\s+\S+\s+FLAGGED$", result.stdout, re.M)
    assert "unexpected finding(s):" in result.stdout


def test_demo_on_postgresql(tmp_path, postgres, pg_database):
    from pg import PASSWORD

    url = postgres.url(pg_database)
    # With the default settings: a healthy session dependency that is slow under load (a ROLLBACK round
    # trip to a busy PostgreSQL) is not a rebuild; only the engine built per request is.
    result, summary = run_demo(tmp_path, "--database-url", url, "--only", "pool_leak", "--only", "n_plus_one",
                               "--only", "dependency_rebuild")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert all(s["found"] and not s["errors"] for s in summary["scenarios"])
    # The patient's tables were created and filled in that database.
    assert postgres.psql(pg_database, "SELECT count(*) FROM patient_orders").strip() == "300"
    # The password is never printed nor saved.
    assert PASSWORD not in result.stdout + result.stderr
    assert PASSWORD not in (tmp_path / "report.html").read_text()
    assert PASSWORD not in (tmp_path / "summary.json").read_text()
