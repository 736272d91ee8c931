"""The agent's lifecycle: one per process, started by the configurator or by ``instrument()``."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from fastapi_doctor import attribution, config, containment
from fastapi_doctor.context import current_request
from fastapi_doctor.diagnosis.registry import Diagnosis
from fastapi_doctor.findings import Finding, FindingsRegistry, log_first_occurrence
from fastapi_doctor.kernel import forks
from fastapi_doctor.kernel.instrumentation_context import Instrumentation
from fastapi_doctor.publish.findings_export import FindingsExport
from fastapi_doctor.version import __version__

_log = logging.getLogger("fastapi_doctor")

_lock = threading.RLock()
_agent: Agent | None = None
_pipelines: Any = None  # OpenTelemetry providers are global: built once per process
_forked = False  # this process was forked from one where the agent ran (a prefork worker)
_fork_hook_installed = False


class Agent:
    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.findings = FindingsRegistry(settings.max_findings)
        # Where signals hand their observations (observations.Report): the rules decide, the findings keep.
        self.report = Diagnosis(settings, self.findings).report
        self.started_at = time.time()
        self.running = False
        self.meter: Any = None
        self.lean: Any = None
        self.tracer: Any = None
        self.pipelines: Any = None
        self.server: Any = None
        self.fastapi: Any = None  # FastAPIHooks once fastapi is imported
        self.request_metrics: Any = None
        self.signals: list[Any] = []
        # Every install of the agent and of its signals, with its undo (stop() undoes them all).
        self.instrumentation = Instrumentation(lambda: self.request_metrics.finished_hooks)
        self._server_attempted = False
        self.findings_export: Any = None  # findings as metrics and log events (findings_export.py)
        self.history: Any = None  # the doctor page's charts (history.py), beside the side server
        self.profiling: Any = None  # GET /profile (profiling.py)

    # -- start / stop --------------------------------------------------------------------------

    def start(self) -> None:
        global _pipelines
        from opentelemetry import metrics, trace

        from fastapi_doctor import telemetry
        from fastapi_doctor.middleware import RequestMetrics, observe_active_requests

        attribution.configure(self.settings.library_modules)
        if self.settings.test_mode:
            self.pipelines = telemetry.in_process(self.settings)
            self.meter = self.pipelines.meter_provider.get_meter("fastapi_doctor", __version__)
        else:
            if _pipelines is None:
                _pipelines = telemetry.build(self.settings)
            self.pipelines = _pipelines
            self.meter = metrics.get_meter("fastapi_doctor", __version__)
        self.tracer = trace.get_tracer("fastapi_doctor", __version__)
        self.findings_export = FindingsExport(
            self.findings,
            self.meter,
            max_findings=self.settings.max_findings,
            logger_provider=self._finding_logs(),
            quiet_s=self.settings.log_repeat_seconds,
        )
        containment.set_counter(
            self.meter.create_counter(
                "fastapi_doctor.internal_errors",
                unit="{error}",
                description="Exceptions caught inside the agent (the app was not affected).",
            )
        )
        self.findings.add_listener(self.findings_export.on_finding)
        self.findings.add_listener(self._mark_request)
        self.findings.add_listener(log_first_occurrence)
        # Histograms recorded on the request path: lean ones, read by the SDK's readers (lean_metrics.py).
        self.lean = self.pipelines.lean
        self.request_metrics = RequestMetrics(self.lean)
        observe_active_requests(self.meter)
        telemetry.instrument(self.pipelines, self.instrumentation)
        self.running = True
        self.instrumentation.when_imported("fastapi", self._on_fastapi)
        from fastapi_doctor import publish, signals

        for detector, target in (*signals.REGISTRY, *publish.REGISTRY):
            if not self.settings.detector_enabled(detector):
                continue
            try:
                signal = signals.load(detector, target)
                signal.instrument(self)
                self.signals.append(signal)
            except Exception as exc:
                containment.report(f"signal {detector}", exc)
        from fastapi_doctor.profiling import Profiling

        self.profiling = Profiling(self.settings.profiling)
        if self.settings.profiling:
            self.instrumentation.wrap_stack(self.profiling.wrap)
        # The side server binds when the app imports fastapi (at once if it already has): a supervisor
        # that never imports the app (gunicorn's master, uvicorn's --workers and --reload parent)
        # holds no port, and its workers get the ports (docs/reliability.md). A test suite gets none.
        if not self.settings.test_mode:
            self.instrumentation.when_imported("fastapi", self._ensure_server)

    def stop(self) -> None:
        """Stop what runs (the signals' threads, the side server), then undo every install."""
        self.running = False
        self._each_signal("uninstrument", reversed(self.signals))
        self.signals.clear()
        if self.profiling is not None:
            self.profiling.stop()
        self.instrumentation.undo()
        if self.history is not None:
            self.history.stop()
            self.history = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def settle(self) -> None:
        """Let the detectors that decide on a later round decide now (the pytest plugin calls it when a
        test's requests are over, so that what they left behind is that test's)."""
        self._each_signal("settle")

    def _each_signal(self, hook_name: str, signals: Iterable[Any] | None = None) -> None:
        """Call ``hook_name()`` on every signal that has it, each contained."""
        for signal in self.signals if signals is None else list(signals):
            hook = getattr(signal, hook_name, None)
            if hook is not None:
                try:
                    hook()
                except Exception as exc:
                    containment.report(f"signal {getattr(signal, 'name', signal)} {hook_name}", exc)

    def _ensure_server(self, _module: Any = None) -> None:
        if self.server is None and not self._server_attempted:
            self._server_attempted = True
            self._start_server()

    def _after_fork(self) -> None:
        """In a forked child (a prefork worker): fresh locks, its own side server, signals told."""
        from fastapi_doctor.publish import server

        self.findings._lock = threading.Lock()
        if self.findings_export is not None:
            self.findings_export.after_fork()
        if self.server is not None:
            server.close_inherited(self.server)
            self.server = None
        self._server_attempted = False
        if "fastapi" in sys.modules:
            self._ensure_server()
        self._each_signal("after_fork")

    def _start_server(self) -> None:
        from fastapi_doctor.publish import server
        from fastapi_doctor.publish.history import History
        from fastapi_doctor.publish.report.html import render_page

        history = History(server.collect_metrics)
        side = server.SideApp(
            doctor=self.doctor_document,
            page=lambda doc, host: render_page(doc, history.snapshot(), self.server.siblings() if self.server else (), host),
            token=self.settings.auth_token,
            protect_metrics=self.settings.protect_metrics,
            profile=self.profiling.handle if self.profiling is not None else None,
        )
        worker = _is_worker()
        parent = None if worker else _instrumented_parent()
        if parent is not None and not self.settings.child_side_server:
            _log.info("fastapi-doctor: child process of instrumented pid %s: no side server "
                      "(FASTAPI_DOCTOR_CHILD_SIDE_SERVER=false)", parent)
            return
        # A prefork worker, or a child process of an instrumented one (a test runner's worker, a
        # subprocess that inherited the wrapper's environment): the next free port when it is taken.
        self.server = server.start(
            side, self.settings.prometheus_host, self.settings.prometheus_port, worker=worker or parent is not None
        )
        if self.server is not None:  # the charts' points are read off the request path, every few seconds
            self.history = history
            history.start()

    # -- fastapi -----------------------------------------------------------------------------------

    def _on_fastapi(self, _module: ModuleType) -> None:
        if not self.running:
            return
        from fastapi_doctor.instrumentation import FastAPIHooks

        self.fastapi = FastAPIHooks(self.request_metrics, configure_telemetry=not self.settings.test_mode)
        self.fastapi.instrument(self.instrumentation)
        # The signals' callbacks waiting for fastapi (instrumentation.on_fastapi, wrap_stack, on_app).
        self.instrumentation.fastapi_hooked(self.fastapi)

    def instrument_app(self, app: Any) -> None:
        from fastapi_doctor.instrumentation import instrument_app

        if self.fastapi is None:
            self._on_fastapi(__import__("fastapi"))
        instrument_app(app, self.fastapi)

    def _finding_logs(self) -> Any:
        """The OTLP logs pipeline the findings' log events go through (None without an endpoint, or with
        the agent's logs switched off by FASTAPI_DOCTOR_DISABLED_DETECTORS=logs)."""
        settings = self.settings
        if settings.test_mode or not settings.otlp_endpoint or not settings.detector_enabled("logs"):
            return None
        try:
            from fastapi_doctor.publish import log_export

            return log_export.logger_provider(self.settings, getattr(self.pipelines, "outage", None),
                                              self.instrumentation)
        except Exception as exc:
            containment.report("finding log events", exc)
            return None

    def _mark_request(self, finding: Finding, is_new: bool) -> None:
        state = current_request.get()
        if state is not None:
            state.add_root_cause(finding.root_cause)

    def diagnosis(self) -> dict[str, Any]:
        """Whether requests are diagnosed: off (with the reason) where FastAPI's hooks were declined."""
        reason = getattr(self.fastapi, "unsupported", None)
        return {"on": True} if reason is None else {"on": False, "reason": reason}

    def doctor_document(self) -> dict[str, Any]:
        findings = sorted(self.findings.all(), key=lambda f: f.last_seen, reverse=True)
        return {
            "service": self.settings.service_name,
            "agent_version": __version__,
            "pid": os.getpid(),
            "started_at": _iso(self.started_at),
            "generated_at": _iso(time.time()),
            "diagnosis": self.diagnosis(),
            "detectors": [s.name for s in self.signals],
            "findings": [f.as_dict() for f in findings],
            "evicted": self.findings.evicted,
            # What made the event loop late that is not the app's code (pauses, the agent's cost).
            "stalls": {k: v for s in self.signals if hasattr(s, "stalls") for k, v in s.stalls().items()},
        }


def _iso(epoch: float) -> str:
    from fastapi_doctor.findings import _iso as iso

    return iso(epoch)


def get() -> Agent | None:
    return _agent


def _is_worker() -> bool:
    """One of several processes of a server: forked from the agent's process, or a multiprocessing
    child (uvicorn's --workers and --reload spawn theirs)."""
    if _forked:
        return True
    mp = sys.modules.get("multiprocessing")
    try:
        return mp is not None and mp.parent_process() is not None
    except Exception:
        return False


# Set by the first process of a tree that starts the agent; the Python processes it starts inherit it
# (the wrapper's PYTHONPATH makes each of them start an agent too).
AGENT_PID_ENV = "FASTAPI_DOCTOR_AGENT_PID"


def _instrumented_parent() -> int | None:
    """The pid of the instrumented process this one was started from, if any (not this one)."""
    try:
        pid = int(os.environ.get(AGENT_PID_ENV, ""))
    except ValueError:
        return None
    return pid if pid != os.getpid() else None


def _after_fork_in_child() -> None:
    global _forked, _lock
    _forked = True
    _lock = threading.RLock()
    agent = _agent
    if agent is not None and agent.running:
        try:
            agent._after_fork()
        except Exception as exc:
            containment.report("agent after fork", exc)


def start(overrides: dict[str, Any] | None = None) -> Agent | None:
    """Start the agent once per process; a second call only warns. Never raises into the app."""
    global _agent
    with _lock:
        if _agent is not None and _agent.running:
            if overrides:
                _log.warning("fastapi-doctor: already instrumented; settings of the second call are ignored")
            return _agent
        config.sanitize_environment()  # bad OTEL_* values named and removed before the SDK reads them
        settings, errors = config.load(overrides=overrides)
        config.report(errors)  # each bad value once, whoever found it first
        if not settings.enabled:
            _log.info("fastapi-doctor: disabled by FASTAPI_DOCTOR_ENABLED")
            return None
        global _fork_hook_installed
        if not _fork_hook_installed:
            forks.on_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True
        os.environ.setdefault(AGENT_PID_ENV, str(os.getpid()))
        agent = Agent(settings)
        try:
            agent.start()
        except Exception as exc:
            containment.report("agent start-up", exc)
            try:
                agent.stop()
            except Exception:
                pass
            return None
        _agent = agent
        return agent


def start_from_environment() -> None:
    agent = start()
    if agent is not None and agent.settings.gc_freeze:
        freeze_start_up_objects()


def freeze_start_up_objects() -> None:
    """Move every object that exists now out of the cyclic collector's reach (``gc.freeze()``).

    Run by the wrapper right after the agent started, before the app is imported: what exists then
    is the interpreter's start-up, OpenTelemetry, gRPC, protobuf and the agent, about 47,000 tracked
    objects that live as long as the process. Left in, every full collection of the app walks them:
    in the benchmark a full collection took 25 ms without the freeze and 11 ms with it, a pause every
    request in flight waits for (docs/performance.md). The app's own objects are created later and
    are collected as before. Start-up garbage is collected first, so nothing unreachable is frozen.
    FASTAPI_DOCTOR_GC_FREEZE=false leaves the collector alone.
    """
    try:
        gc.collect()
        gc.freeze()
    except Exception as exc:
        containment.report("gc freeze", exc)


def stop() -> None:
    global _agent
    with _lock:
        if _agent is not None:
            _agent.stop()
            _agent = None
