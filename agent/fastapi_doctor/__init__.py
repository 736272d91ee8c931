"""fastapi-doctor: names the root cause of a slow FastAPI service, with the evidence and the line.

Start it with ``opentelemetry-instrument uvicorn app:app`` (no code change), or in code::

    import fastapi_doctor
    fastapi_doctor.instrument(app)

Importing this package imports none of the app's libraries.

PYTEST_DONT_REWRITE: under ``opentelemetry-instrument pytest`` the agent is imported before pytest, which
marks the package of a plugin (``pytest --doctor``) for assertion rewriting and would warn that it is
already imported: an error in a suite run with ``-W error`` (FastAPI's own).
"""

from __future__ import annotations

from typing import Any

from fastapi_doctor.version import __version__

__all__ = ["__version__", "instrument", "uninstrument", "get_findings"]


def instrument(app: Any = None, **settings: Any) -> None:
    """Start the agent (settings as keyword arguments override ``FASTAPI_DOCTOR_*``) and hook ``app``.

    Every FastAPI app of the process is measured once the agent runs; passing ``app`` also hooks an
    app whose middleware stack was already built. Calling it twice only warns.
    """
    from fastapi_doctor import _agent, containment

    agent = _agent.start(overrides=settings)
    if agent is not None and app is not None:
        try:
            agent.instrument_app(app)
        except Exception as exc:
            containment.report("instrument(app)", exc)


def uninstrument() -> None:
    """Undo every patch, stop the detectors and the side server."""
    from fastapi_doctor import _agent

    _agent.stop()


def get_findings() -> list[dict[str, Any]]:
    """The current findings as dictionaries (the /doctor schema)."""
    from fastapi_doctor import _agent

    agent = _agent.get()
    return [] if agent is None else agent.doctor_document()["findings"]
