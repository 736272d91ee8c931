"""A blocking call seen on the event loop inside a request, as a ``blocking_io`` fact at the user's line.

Shared by the signals that see such a call happen: the call interception of the pytest plugin
(:mod:`fastapi_doctor.signals.blocking_calls`) and the database signal, which sees a statement sent
through a sync SQLAlchemy dialect on the loop's thread.
"""

from __future__ import annotations

import types
from typing import Any

from fastapi_doctor import attribution, containment
from fastapi_doctor.context import current_request
from fastapi_doctor.kernel.rebuilds import BUILDERS
from fastapi_doctor.observations import BlockingCall, Report

_FRAMEWORK = frozenset({"fastapi", "starlette"})


def record(report: Report, frame: types.FrameType | None, blocking_function: str, detected_by: str) -> None:
    """Reports ``blocking_function``, called from ``frame`` outwards, as a blocking call of the app's
    line, when it is made inside a request and the app has a line to change."""
    try:
        state: Any = current_request.get()
        if state is None:
            return  # the test's own code on the loop, a fixture, start-up: not a request's
        user = None
        for info in attribution.capture(frame):  # innermost first: the first frame of the agent or of the app decides
            if attribution.is_agent_file(info.filename):
                return  # the agent's own work (attribution reading a file) is never the app's blame
            if (info.module, info.code.co_name) in BUILDERS:
                return  # building an engine, client or pool: the rebuild is the finding, not its I/O
            if info.module.partition(".")[0] in _FRAMEWORK:
                # Reached through FastAPI's or Starlette's own code (its routing reading an endpoint's
                # source, Jinja2's loader under TemplateResponse, the TestClient's receive): the
                # framework's call, or the test harness's; the app has no line to change.
                return
            if not info.filename.startswith("<") and not attribution.is_library_file(info.filename):
                user = info  # generated code (<string>, SQLAlchemy's) is not a line the user wrote
                break
        if user is None:
            return  # no line of the app's to name: library internals, not the app's call
        report(BlockingCall(
            call=attribution.call_in(user) or blocking_function,
            blocking_function=blocking_function,
            detected_by=detected_by,
            location=attribution.location(user),
            method=state.method,
            route=state.route,
        ))
    except Exception as exc:
        containment.report("blocking call finding", exc)
