"""Profiles of one route on demand: ``GET /profile?route=/x&seconds=10`` on the side server.

Off unless ``FASTAPI_DOCTOR_PROFILING=true``. When on, a gate sits in each app's middleware stack
(a stack wrapper, outside the app's own middleware): while no profile is armed it costs one
attribute test per request. ``/profile`` arms it for ``seconds``; every request of that route that
starts in the window runs under its own pyinstrument profiler (async mode: only that request's
task is sampled), and the answer is pyinstrument's HTML of all of them together. One profile at a
time. pyinstrument is an optional dependency (``pip install fastapi-doctor[profiling]``).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import weakref
from functools import reduce
from typing import Any

from fastapi_doctor import containment

DEFAULT_SECONDS = 10.0
MAX_SECONDS = 60.0
MAX_REQUESTS = 100  # profiled requests kept per profile (memory bound)
SAMPLE_INTERVAL_S = 0.001
FINISH_WAIT_S = 30.0  # how long a profile waits for requests still running when its window ends

Response = tuple[int, str, bytes]


def _error(status: int, message: str) -> Response:
    return status, "application/json", json.dumps({"error": message}).encode() + b"\n"


class _Armed:
    """One profile in progress."""

    __slots__ = ("route", "routes", "sessions", "in_flight", "deadline", "skipped")

    def __init__(self, route: str, routes: dict[int, Any], deadline: float) -> None:
        self.route = route
        self.routes = routes  # id(app) -> the compiled pattern of the route's full path
        self.sessions: list[Any] = []
        self.in_flight = 0
        self.deadline = deadline
        self.skipped = 0


class Profiling:
    """Owns the gate and the ``/profile`` handler (the agent's instrumentation context takes the gate out)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.armed: _Armed | None = None  # read on every request by the gates: keep it one attribute
        self._apps: weakref.WeakSet[Any] = weakref.WeakSet()
        self._busy = threading.Lock()

    # -- the gate (``wrap``: the agent's stack wrapper while profiling is on) -----------------

    def stop(self) -> None:
        self.armed = None

    def wrap(self, app: Any, stack: Any) -> Any:
        self._apps.add(app)
        return ProfileGate(stack, self, app)

    # -- the side server's handler (runs on a side-server thread) ------------------------------

    def handle(self, query: dict[str, list[str]]) -> Response:
        if not self.enabled:
            return _error(404, "profiling is off: start the app with FASTAPI_DOCTOR_PROFILING=true")
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            return _error(501, "profiling needs pyinstrument: pip install 'fastapi-doctor[profiling]'")
        route, seconds, problem = _parameters(query)
        if problem is not None:
            return _error(400, problem)
        assert route is not None and seconds is not None
        routes = self._routes(route)
        if not routes:
            known = sorted({p for app in list(self._apps) for p in _templates(app)})
            hint = f"; routes: {', '.join(known[:30])}" if known else "; no app has served a request yet"
            return _error(400, f"no route {route!r} in the app{hint}")
        if not self._busy.acquire(blocking=False):
            return _error(409, "a profile is already running; try again when it ends")
        try:
            return self._profile(route, routes, seconds)
        finally:
            self._busy.release()

    def _routes(self, template: str) -> dict[int, Any]:
        """id(app) -> the pattern of ``template``'s full path, for each app that declares it (on the
        app, on an included router, under a mount)."""
        found: dict[int, Any] = {}
        for app in list(self._apps):
            if template in _templates(app):
                from starlette.routing import compile_path

                found[id(app)] = compile_path(template)[0]
        return found

    def _profile(self, route: str, routes: dict[int, Any], seconds: float) -> Response:
        armed = _Armed(route, routes, time.monotonic() + seconds)
        self.armed = armed
        try:
            time.sleep(seconds)
        finally:
            self.armed = None
        deadline = time.monotonic() + FINISH_WAIT_S
        while armed.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        sessions = list(armed.sessions)
        if not sessions:
            body = (
                "<!doctype html><html lang=en><meta charset=utf-8><title>fastapi-doctor profile</title>"
                f"<p>No request of <code>{_html(route)}</code> started within {seconds:g} s: nothing to profile.</p>"
            )
            return 200, "text/html; charset=utf-8", body.encode()
        from pyinstrument.renderers import HTMLRenderer
        from pyinstrument.session import Session

        session = reduce(Session.combine, sessions)
        html = HTMLRenderer().render(session)
        return 200, "text/html; charset=utf-8", html.encode()


def _html(text: str) -> str:
    from html import escape

    return escape(text)


def _templates(app: Any) -> list[str]:
    from fastapi_doctor.routes import endpoints

    return [template for template, _ in endpoints(app)]


def _parameters(query: dict[str, list[str]]) -> tuple[str | None, float | None, str | None]:
    routes = query.get("route", [])
    if len(routes) != 1:
        return None, None, "give exactly one route, e.g. /profile?route=/items/{item_id}&seconds=10"
    route = routes[0]
    if not route.startswith("/") or len(route) > 500 or any(c.isspace() for c in route):
        return None, None, "route must be a route template starting with '/', e.g. /items/{item_id}"
    raw = query.get("seconds", [str(DEFAULT_SECONDS)])
    if len(raw) != 1:
        return None, None, "give seconds once"
    try:
        seconds = float(raw[0])
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_SECONDS:
        return None, None, f"seconds must be a number above 0 and at most {MAX_SECONDS:g}"
    return route, seconds, None


class ProfileGate:
    """The gate in an app's stack: passes requests through, profiles those of the armed route."""

    __slots__ = ("app", "_profiling", "_owner")

    def __init__(self, app: Any, profiling: Profiling, owner: Any) -> None:
        self.app = app  # stack walkers look inside through .app
        self._profiling = profiling
        self._owner = id(owner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        armed = self._profiling.armed
        if armed is None:
            await self.app(scope, receive, send)
            return
        profiler = self._start(armed, scope, sys._getframe())
        if profiler is None:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._stop(armed, profiler)

    @containment.contained("profiling")
    def _start(self, armed: _Armed, scope: dict[str, Any], frame: Any) -> Any:
        if scope.get("type") != "http" or time.monotonic() > armed.deadline:
            return None
        pattern = armed.routes.get(self._owner)
        if pattern is None:
            return None
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # as Starlette routes: the path below the app's root
            path = path[len(root):]
        if pattern.match(path) is None:
            return None
        if len(armed.sessions) + armed.in_flight >= MAX_REQUESTS:
            armed.skipped += 1
            return None
        from pyinstrument import Profiler

        profiler = Profiler(interval=SAMPLE_INTERVAL_S, async_mode="enabled")
        profiler.start(caller_frame=frame, target_description=f"requests of {armed.route}")
        armed.in_flight += 1
        return profiler

    @containment.contained("profiling")
    def _stop(self, armed: _Armed, profiler: Any) -> None:
        try:
            armed.sessions.append(profiler.stop())
        finally:
            armed.in_flight -= 1
