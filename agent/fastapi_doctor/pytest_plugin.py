"""``pytest --doctor``: the test whose requests block the loop, leak a connection, rebuild a
dependency, run N+1 queries or send a huge uncompressed body fails, with the root cause, the route,
the line, the evidence, the fix and the runbook (docs/pytest.md).

Registered as a pytest plugin by ``pip install fastapi-doctor`` (entry point ``pytest11``); it does
nothing until ``--doctor`` is given (``--doctor=report`` reports without failing). Importing it imports
nothing but the standard library.

The findings are the runtime agent's (one source): the agent runs in the test process in test mode
(no side server, no exporters, the global OpenTelemetry providers untouched) and the plugin only
decides which of its findings fail a test. A finding belongs to the test that was running when it was
reported, whatever the thread (the TestClient's portal, a live server's, a watchdog): the requests of
its fixtures (setup and teardown) count for it. Late findings, reported after a test ended, go to it
too until the next test starts.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MODES = ("fail", "report")
SESSION_PLUGIN = "fastapi-doctor-session"
PROPERTY = "fastapi_doctor.finding"  # the user property (and JUnit XML property) of each finding
TIMING_ROOT_CAUSES_THAT_FAIL = ("blocking_io",)  # the loop watchdog: the only judge of CPU-bound blocks

_AGENT_SETTINGS = (  # keys of [tool.fastapi-doctor] handed to the agent as they are
    "loop_block_ms",
    "slow_dependency_ms",
    "slow_middleware_ms",
    "leak_seconds",
    "large_response_bytes",
    "n_plus_one_threshold",
    "library_modules",
    "disabled_detectors",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastapi-doctor", "fastapi-doctor: fail tests whose requests have a root cause")
    group.addoption(
        "--doctor",
        nargs="?",
        const="fail",
        default=None,
        choices=MODES,
        help="run the fastapi-doctor agent in the tests; a test whose requests show a root cause fails "
        "(--doctor=report: listed, not failed)",
    )
    group.addoption("--doctor-json", metavar="PATH", default=None, help="write the findings, with their tests, as JSON")
    group.addoption(
        "--doctor-baseline",
        metavar="FILE",
        default=None,
        help="findings listed in FILE are known: they are reported, only new ones fail",
    )
    group.addoption(
        "--doctor-update-baseline",
        action="store_true",
        default=False,
        help="write every finding of this run to the baseline file (and fail nothing)",
    )


@dataclass
class Options:
    mode: str
    allow: frozenset[str] = frozenset()
    report_only: frozenset[str] = frozenset({"slow_middleware"})
    fail_on_timing: frozenset[str] = frozenset(TIMING_ROOT_CAUSES_THAT_FAIL)
    ignore_paths: tuple[str, ...] = ()
    baseline: Path | None = None
    update_baseline: bool = False
    json_path: Path | None = None
    agent_settings: dict[str, Any] = field(default_factory=dict)
    suite_files: tuple[str, ...] = ("test_*.py", "*_test.py", "conftest.py")  # pytest's python_files, conftests


def read_options(config: pytest.Config, namespace: Any) -> Options | None:
    """The plugin's options: the command line over ``[tool.fastapi-doctor]`` of the rootdir's pyproject."""
    mode = getattr(namespace, "doctor", None)
    if mode is None:
        return None
    table = _pyproject_table(Path(str(getattr(config, "rootpath", Path.cwd()))))
    options = Options(mode=mode)
    options.allow = frozenset(table.get("allow", ()))
    if "report_only" in table:
        options.report_only = frozenset(table["report_only"])
    if "fail_on_timing" in table:
        options.fail_on_timing = frozenset(table["fail_on_timing"])
    options.ignore_paths = tuple(table.get("ignore_paths", ()))
    baseline = getattr(namespace, "doctor_baseline", None) or table.get("baseline")
    options.baseline = Path(baseline) if baseline else None
    options.update_baseline = bool(getattr(namespace, "doctor_update_baseline", False))
    json_path = getattr(namespace, "doctor_json", None)
    options.json_path = Path(json_path) if json_path else None
    options.agent_settings = {k: table[k] for k in _AGENT_SETTINGS if k in table}
    try:
        options.suite_files = (*config.getini("python_files"), "conftest.py")
    except (ValueError, KeyError):
        pass  # before the ini is read: pytest's defaults
    return options


def _pyproject_table(rootdir: Path) -> dict[str, Any]:
    import tomllib

    for folder in (rootdir, *rootdir.parents):
        path = folder / "pyproject.toml"
        if path.is_file():
            with path.open("rb") as f:
                return dict(tomllib.load(f).get("tool", {}).get("fastapi-doctor", {}))
    return {}


# -- start: before conftest.py files import the app ------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    options = read_options(early_config, early_config.known_args_namespace)
    if options is not None and not _may_distribute(early_config.known_args_namespace):
        _start(early_config, options)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "doctor(allow=[...]): fastapi-doctor root causes this test may show without failing"
    )
    if not config.pluginmanager.has_plugin(SESSION_PLUGIN):
        options = read_options(config, config.option)  # loaded with -p, or xdist asked for: no early start
        if options is None:
            return
        if _distributes(config):
            # The xdist controller runs no test: no agent here. Its workers' findings reach it as the
            # user properties of their reports; it lists them and writes the files.
            config.pluginmanager.register(DoctorReport(options), SESSION_PLUGIN)
        else:
            _start(config, options)


def _is_worker() -> bool:
    import os

    return "PYTEST_XDIST_WORKER" in os.environ  # set by pytest-xdist before a worker parses its arguments


def _may_distribute(namespace: Any) -> bool:
    """Early, before xdist has resolved ``-n``: this process may be an xdist controller (decided in
    pytest_configure). A worker is parsed with the controller's arguments, ``-n`` included."""
    if _is_worker():
        return False
    return bool(getattr(namespace, "numprocesses", None)) or getattr(namespace, "dist", "no") not in ("no", None)


def _distributes(config: pytest.Config) -> bool:
    """This process is an xdist controller: it sends the tests to workers (xdist's own test)."""
    if _is_worker() or hasattr(config, "workerinput"):
        return False
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def _start(config: pytest.Config, options: Options) -> None:
    import fastapi_doctor
    from fastapi_doctor import _agent

    fastapi_doctor.instrument(
        test_mode=True,
        # Every request measured in full; no request log in the test output.
        middleware_timed_per_second=0,
        disabled_detectors=sorted({"logs", *options.agent_settings.pop("disabled_detectors", ())}),
        **options.agent_settings,
    )
    agent = _agent.get()
    if agent is None:
        return
    session = DoctorSession(options, agent)
    session.install_blocking_calls()
    config.pluginmanager.register(session, SESSION_PLUGIN)


# -- per test --------------------------------------------------------------------------------------


class DoctorReport:
    """The session's findings, from the tests' reports: listed at the end, written for CI tools. Alone in
    an xdist controller (its workers' reports carry their findings as user properties)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._summary: dict[str, dict[str, Any]] = {}  # finding id -> finding with its tests

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name != PROPERTY:
                continue
            finding = json.loads(value)
            with self._lock:
                entry = self._summary.setdefault(finding["id"], {**finding, "tests": []})
                if report.nodeid not in entry["tests"]:
                    entry["tests"].append(report.nodeid)
                if finding["status"] == "failed" and report.failed:
                    entry["status"] = "failed"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self._summary:
            terminalreporter.write_sep("=", "fastapi-doctor: no findings")
            return
        terminalreporter.write_sep("=", f"fastapi-doctor: {len(self._summary)} finding(s)")
        for finding in self.findings():
            terminalreporter.write_line(_headline(finding) + f" [{finding['status']}]")
            terminalreporter.write_line(f"    {finding['summary']}")
            for nodeid in finding["tests"][:10]:
                terminalreporter.write_line(f"    - {nodeid}")
            if len(finding["tests"]) > 10:
                terminalreporter.write_line(f"    - ... and {len(finding['tests']) - 10} more tests")

    def findings(self) -> list[dict[str, Any]]:
        return sorted(self._summary.values(), key=lambda f: (f["root_cause"], f.get("route") or "", f["id"]))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):
            return  # an xdist worker: the controller writes the files
        if self.options.json_path is not None:
            document = {"findings": self.findings()}
            self.options.json_path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if self.options.update_baseline and self.options.baseline is not None:
            _write_baseline(self.options.baseline, self.findings())


class DoctorSession(DoctorReport):
    """The agent in the process that runs the tests: each test's findings, and which of them fail it."""

    def __init__(self, options: Options, agent: Any) -> None:
        super().__init__(options)
        self.agent = agent
        self._owner: str | None = None  # the nodeid findings go to now
        self._by_test: dict[str, dict[str, dict[str, Any]]] = {}  # nodeid -> finding id -> finding
        self.baseline = _read_baseline(options.baseline) if options.baseline and not options.update_baseline else set()
        agent.findings.add_listener(self._on_finding)

    def install_blocking_calls(self) -> None:
        from fastapi_doctor import containment

        try:
            from fastapi_doctor.signals.blocking_calls import BlockingCallSignal

            signal = BlockingCallSignal()
            signal.instrument(self.agent)
            self.agent.signals.append(signal)  # undone with the agent
        except ImportError:
            pass  # blockbuster not installed: the loop watchdog alone judges blocking calls
        except Exception as exc:
            containment.report("blocking call detection", exc)

    def _on_finding(self, finding: Any, _is_new: bool) -> None:
        owner = self._owner
        if owner is None:
            return
        data = finding.as_dict()
        with self._lock:
            found = self._by_test.setdefault(owner, {})
            seen = found.get(data["id"])
            if seen is not None:
                data["occurrences_in_test"] = seen["occurrences_in_test"] + 1
                data["_reported"] = seen.get("_reported", False)
            else:
                data["occurrences_in_test"] = 1
            found[data["id"]] = data

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        with self._lock:
            self._owner = item.nodeid
            self._by_test.pop(item.nodeid, None)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        try:
            return (yield)
        finally:
            # A block its requests caused is judged, and what they left behind (a connection still out)
            # is this test's, before the next test runs.
            self.agent.settle()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        report: pytest.TestReport = yield
        if call.when == "setup" and report.passed:
            return report
        if call.when == "teardown":
            self.agent.settle()
        with self._lock:
            found = self._by_test.get(item.nodeid, {})
            if call.when == "teardown":
                # Findings of the teardown (and late ones) that the call's report did not carry.
                fresh = [f for f in found.values() if not f.get("_reported")]
            else:
                fresh = list(found.values())
            for finding in fresh:
                finding["_reported"] = True
        if not fresh:
            return report
        allowed = self._allowed(item)
        failing = []
        for finding in fresh:
            status = self._status(finding, allowed)
            prop = (PROPERTY, json.dumps(_public(finding, status), sort_keys=True))
            report.user_properties.append(prop)
            item.user_properties.append(prop)  # the teardown report carries them to JUnit XML
            if status == "failed":
                failing.append(finding)
        if failing and report.passed and self.options.mode == "fail" and not self.options.update_baseline:
            report.outcome = "failed"
            report.longrepr = "\n\n".join(failure_text(f) for f in failing)
        return report

    def _allowed(self, item: pytest.Item) -> frozenset[str]:
        allowed = set(self.options.allow)
        for marker in item.iter_markers("doctor"):
            allowed.update(marker.kwargs.get("allow", ()))
            allowed.update(marker.args)
        return frozenset(allowed)

    def _suite_file(self, path: str) -> bool:
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.options.suite_files)

    def _status(self, finding: dict[str, Any], allowed: frozenset[str]) -> str:
        root_cause = finding["root_cause"]
        location = finding.get("location") or {}
        if root_cause in allowed:
            return "allowed"
        if location and self._suite_file(location["file"]):
            # At a line of the suite's own tests, fixtures or dependency overrides (an async test's CPU
            # work or freezegun's freeze_time on the loop it shares with the app, an override that
            # builds settings per request): not the app's.
            return "suite_code"
        if location and any(fnmatch.fnmatch(location["file"], p) for p in self.options.ignore_paths):
            return "ignored"
        if baseline_key(finding) in self.baseline:
            return "baseline"
        if root_cause in self.options.report_only:
            return "reported"
        if basis(finding) == "timing" and root_cause not in self.options.fail_on_timing:
            return "reported"
        return "failed"

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        import fastapi_doctor

        fastapi_doctor.uninstrument()


# -- rules -----------------------------------------------------------------------------------------


def basis(finding: dict[str, Any]) -> str:
    """``fact`` when the finding is a thing that happened (a call, a count, a size, a connection left
    out); ``timing`` when it is a duration over a threshold, which a busy test machine can cross."""
    evidence = finding.get("evidence") or {}
    root_cause = finding["root_cause"]
    if root_cause == "slow_middleware":
        return "timing"
    if root_cause == "blocking_io":
        from fastapi_doctor.diagnosis.blocking_io import DETECTED_AS_FACT

        return "fact" if evidence.get("detected_by") in DETECTED_AS_FACT else "timing"
    if root_cause == "dependency_rebuild":
        return "timing" if "p50_ms" in evidence else "fact"
    if root_cause == "pool_leak":
        return "timing" if evidence.get("reason") == "held_too_long" else "fact"
    if root_cause == "large_payload":
        exposed = evidence.get("p50_uncompressed_bytes_to_gzip_clients") or 0
        return "fact" if exposed > evidence.get("threshold_bytes", 0) else "timing"
    return "fact"


def _public(finding: dict[str, Any], status: str) -> dict[str, Any]:
    out = {k: v for k, v in finding.items() if not k.startswith("_") and k not in ("first_seen", "last_seen", "count")}
    out["status"] = status
    out["basis"] = basis(finding)
    return out


def _headline(finding: dict[str, Any]) -> str:
    method = finding.get("method")
    route = finding.get("route")
    on = f" on {method + ' ' if method else ''}{route}" if route else ""
    location = finding.get("location")
    at = f" at {location['file']}:{location['line']} in {location['function']}" if location else ""
    return f"{finding['root_cause']}{on}{at}"


def failure_text(finding: dict[str, Any]) -> str:
    """What a failing test says, in pytest's style: cause, route, line, evidence, fix, runbook."""
    from fastapi_doctor.publish.runbooks import runbook_fixes

    evidence = ", ".join(f"{k}={v}" for k, v in (finding.get("evidence") or {}).items() if v not in (None, ""))
    lines = [
        f"fastapi-doctor: {_headline(finding)}",
        f"E   {finding['summary']}",
        f"    evidence: {evidence}",
    ]
    for fix in runbook_fixes(finding["root_cause"]):
        lines.append(f"    fix: {fix}")
    lines.append(f"    runbook: {finding.get('runbook')}")
    lines.append(
        f"    (allow it in this test with @pytest.mark.doctor(allow=[\"{finding['root_cause']}\"]), "
        "or list it in a baseline: --doctor-baseline FILE --doctor-update-baseline)"
    )
    return "\n".join(lines)


# -- baseline: only new findings fail ----------------------------------------------------------------


def baseline_key(finding: dict[str, Any]) -> tuple[str, str, str, str]:
    """A finding as a baseline knows it: without the line number, which moves with every edit above it."""
    location = finding.get("location") or {}
    return (finding["root_cause"], finding.get("route") or "", location.get("file", ""), location.get("function", ""))


def _read_baseline(path: Path) -> set[tuple[str, str, str, str]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    return {
        (e["root_cause"], e.get("route") or "", e.get("file", ""), e.get("function", "")) for e in document["findings"]
    }


def _write_baseline(path: Path, findings: list[dict[str, Any]]) -> None:
    entries = sorted({baseline_key(f) for f in findings})
    document = {
        "comment": "fastapi-doctor baseline: these findings are known; only new ones fail (pytest --doctor).",
        "findings": [dict(zip(("root_cause", "route", "file", "function"), e)) for e in entries],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
