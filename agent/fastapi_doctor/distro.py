"""Entry points through which ``opentelemetry-instrument`` loads the agent with no code change.

* ``opentelemetry_distro = fastapi_doctor`` sets the defaults (sampler, semantic-convention opt-in)
  and decides how each installed instrumentor is loaded.
* ``opentelemetry_configurator = fastapi_doctor`` starts the agent: providers, exporters, side
  server and the import hooks that instrument the app's libraries when the app imports them.

With ``opentelemetry-distro`` installed too, pick this one with
``OTEL_PYTHON_DISTRO=fastapi_doctor OTEL_PYTHON_CONFIGURATOR=fastapi_doctor``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from typing import Any

from fastapi_doctor import _imports, config

# Before the SDK is imported: it raises at import on some bad OTEL_* values (span limits), which would
# keep this module, and so the whole agent, from loading. Each bad value is named once and removed.
config.sanitize_environment()

from opentelemetry.instrumentation.distro import BaseDistro  # noqa: E402

_log = logging.getLogger("fastapi_doctor")

# Defaults the distro sets; each is overridden by its own variable when the user sets it. Not the
# sampler: the agent's own provider takes its default from the settings, and a provider the app builds
# itself keeps the SDK's (set in the environment, 0.1 would silently sample the app's own traces too).
DEFAULT_ENVIRONMENT = {
    "OTEL_SEMCONV_STABILITY_OPT_IN": "http,database",
    "OTEL_METRICS_EXPORTER": "prometheus",
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_LOGS_EXPORTER": "none",
}


# True in a process that must run without OpenTelemetry (see _parent_removed_the_otel_environment):
# the distro, the instrumentors and the configurator then do nothing.
_stay_out = False


def _parent_removed_the_otel_environment() -> bool:
    """A Python child of an instrumented process whose parent started it with every ``OTEL_*``
    variable removed (the defaults below, which the parent's distro set, included), as test suites do
    to get an interpreter without OpenTelemetry. The wrapper's PYTHONPATH, inherited, would start an
    agent anyway; it stays out, as the child asked."""
    from fastapi_doctor._agent import AGENT_PID_ENV

    parent = os.environ.get(AGENT_PID_ENV)
    return (
        parent is not None
        and parent != str(os.getpid())
        and not any(name.startswith("OTEL_") for name in os.environ)
    )


class FastAPIDoctorDistro(BaseDistro):
    def _configure(self, **kwargs: Any) -> None:
        global _stay_out
        _stay_out = _parent_removed_the_otel_environment()
        if _stay_out:
            _log.info("fastapi-doctor: not started: this process's parent removed the OTEL_* environment")
            return
        for name, value in DEFAULT_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        # Runs before the wrapper loads the instrumentors, whose version checks log there.
        logging.getLogger(_CONFLICT_LOGGER).addFilter(_CONFLICT_NOTE)

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        """Load an instrumentor only once the app imports the library it instruments.

        Contrib instrumentors import their library at module level; loading them at interpreter
        start-up would change the app's import order (it is why the stock wrapper aborts FastAPI's
        own test suite). Contrib's FastAPI instrumentor is used only on FastAPI versions without
        native OpenTelemetry: never both.
        """
        if _stay_out:
            return
        name = entry_point.name
        module = name.replace("-", "_")
        if name == "fastapi":
            _imports.when_imported("fastapi", lambda _m: _load_fastapi_instrumentor(entry_point, kwargs))
            return
        if module not in sys.modules and _findable(module):
            _imports.when_imported(module, lambda _m: _load_now(entry_point, kwargs))
            return
        _load_now(entry_point, kwargs)


_CONFLICT_LOGGER = "opentelemetry.instrumentation.auto_instrumentation._load"
_CONFLICT = re.compile(r'^(\S+) only instruments "(.*)", but currently installed version \("(.*)"\)')


class _ConflictNote(logging.Filter):
    """Contrib's version checks log an ERROR ("sqlalchemy only instruments sqlalchemy<2.1.0 …, so
    nothing can be instrumented") that reads as if the agent were broken on a current stack. For the
    libraries the agent diagnoses with hooks of its own, say once what it means instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            match = _CONFLICT.match(record.getMessage())
        except Exception:
            return True
        if match is None:
            return True
        name, required, found = match.groups()
        if name == "fastapi":
            # The agent's own hooks say whether this FastAPI is diagnosed (instrumentation.py), and
            # FastAPI 0.165+ makes its own spans.
            _log.debug("fastapi-doctor: contrib's FastAPI instrumentation (%s) skips FastAPI %s", required, found)
            return False
        if name == "sqlalchemy":
            record.msg = (
                "fastapi-doctor: contrib's SQLAlchemy instrumentation supports %s, not the installed %s: "
                "no SQL spans from it. Diagnosis is unaffected: the agent reads SQLAlchemy's own events "
                "(pool_leak, n_plus_one, slow queries)."
            )
            record.args = (required.split(";")[0].strip(), found)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_CONFLICT_NOTE = _ConflictNote()


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _load_now(entry_point: Any, kwargs: dict[str, Any]) -> None:
    try:
        entry_point.load()().instrument(**kwargs)
    except Exception:  # an instrumentor that fails must not stop the app
        _log.exception("fastapi-doctor: instrumentation %s failed to load; the app runs without it", entry_point.name)


def _load_fastapi_instrumentor(entry_point: Any, kwargs: dict[str, Any]) -> None:
    from fastapi_doctor.instrumentation import fastapi_has_native_telemetry

    if fastapi_has_native_telemetry():
        _log.debug("fastapi-doctor: FastAPI has native OpenTelemetry; contrib's FastAPI instrumentor not loaded")
        return
    if "meter_provider" not in kwargs:
        from opentelemetry.metrics import NoOpMeterProvider

        # Spans only: the agent records http.server.request.duration for every request itself, once
        # per request (contrib's would count a mounted app's request again, under the mount's route).
        kwargs = {**kwargs, "meter_provider": NoOpMeterProvider()}
    _load_now(entry_point, kwargs)


class FastAPIDoctorConfigurator:
    """The wrapper's configurator entry point (``configure()``; the SDK's base class is not needed,
    and importing it would import the SDK in a process that stays out)."""

    def configure(self, **kwargs: Any) -> None:
        if _stay_out:
            return
        from fastapi_doctor import _agent

        _agent.start_from_environment()
