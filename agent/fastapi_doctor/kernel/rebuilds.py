"""Expensive objects built inside requests: the evidence of a ``dependency_rebuild``.

An engine, a connection pool, an HTTP client, a session factory or a settings object parsed from the
environment and files is meant to be built once. Built inside a request by the same line again and
again, it is rebuilt per request: the rule (``diagnosis.dependency_rebuild``, through ``agent.report``)
names the object, the line, the dependency it ran in and how often. Here the sites are counted.

Shared by the signals that see the objects being built (the dependencies signal patches the classes'
``__init__``; the database signal wraps ``Engine.__init__``).
"""

from __future__ import annotations

import types
from typing import Any

from fastapi_doctor import attribution, containment
from fastapi_doctor.context import current_request
from fastapi_doctor.kernel.location import Location
from fastapi_doctor.kernel.routes_by_line import RoutesByLine
from fastapi_doctor.observations import ObjectBuilt, Report, SameComputation

_MAX_SITES = 1_000


class RebuildSites:
    """Counts, per (object, line), the objects built inside requests; the dependency_rebuild rule decides."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.counts: dict[tuple[str, Location | None], int] = {}
        self.routes = RoutesByLine()  # by (object, line): the routes that built it there

    def created(self, label: str, frame: types.FrameType | None, details: dict[str, Any] | None = None) -> None:
        """``label`` (e.g. ``httpx.AsyncClient``, a key of the rule's ``COSTS``) was built; ``frame``
        is the frame that called its constructor."""
        try:
            state = current_request.get()
            if state is None:
                return  # start-up work, built once: not a rebuild
            if frame is not None and (frame.f_globals.get("__name__"), frame.f_code.co_name) in ONE_SHOT_HELPERS:
                return  # requests.get() and friends: a session for one call, the helper's, not the app's object
            where, dependency, cached = creation_site(frame)
            if cached:
                return  # built by a function the app caches (functools.lru_cache): its cache decides how often
            site = (label, where)
            count = self._count(site)
            if count is None:
                return
            # One line rebuilt on several routes is one mistake: one finding (on the route that built it
            # most), every route that pays for it in its evidence.
            method, route, routes = self.routes.add(site, state.method, state.route)
            self.report(ObjectBuilt(label, where, dependency, count, method, route, details or {}, routes=routes))
        except Exception as exc:
            containment.report("rebuild evidence", exc)

    def computed(
        self,
        dependency: str,
        where: Location | None,
        method: str | None,
        route: str | None,
        cpu_s: float,
        inputs: tuple[Any, ...],
    ) -> None:
        """A sync dependency spent ``cpu_s`` of its own CPU on one build; the same ``inputs`` again and
        again is a pure computation repeated per request (inputs that cannot be compared never are)."""
        try:
            fingerprint = _fingerprint(inputs)
            if fingerprint is None:
                return
            count = self._count((f"{dependency}:{fingerprint}", where))
            if count is None:
                return
            self.report(SameComputation(dependency, where, cpu_s, count, method, route))
        except Exception as exc:
            containment.report("rebuild evidence", exc)

    def clear(self) -> None:
        self.counts.clear()
        self.routes.clear()

    def _count(self, key: tuple[str, Location | None]) -> int | None:
        """Count one more of ``key``; None once too many sites are counted."""
        counts = self.counts
        if key not in counts and len(counts) >= _MAX_SITES:
            return None
        count = counts.get(key, 0) + 1
        counts[key] = count
        return count


def creation_site(frame: types.FrameType | None, limit: int = 64) -> tuple[Location | None, str | None, bool]:
    """The user's line that built the object, the dependency it ran in (if any), and whether the user's
    function that built it is one the app caches."""
    where: Location | None = None
    cached = False
    depth = 0
    while frame is not None and depth < limit:
        code = frame.f_code
        filename = code.co_filename
        # "<string>": functions libraries generate for their decorators (SQLAlchemy's), not the user's code.
        if where is None and not filename.startswith("<") and not attribution.is_library_file(filename):
            where = Location(attribution.display_path(filename), frame.f_lineno or 0, code.co_qualname)
            cached = _cached_function(frame)
        role = attribution.code_role(code)
        if role is not None and where is not None:
            return where, role[1] if role[0] == "dependency" else None, cached
        frame = frame.f_back
        depth += 1
    return where, None, cached


def _cached_function(frame: types.FrameType) -> bool:
    """The frame runs the body of a function the app wrapped in a cache (``functools.lru_cache`` or
    ``cache``, cachetools, anything with ``cache_clear`` and ``__wrapped__``), found by its qualified
    name in its module. What it builds is built once per key; a suite that clears the cache between
    tests (to reread the environment) builds it again in the next test's first request."""
    code = frame.f_code
    target: Any = frame.f_globals
    for part in code.co_qualname.split("."):
        if part == "<locals>":
            return False
        target = target.get(part) if isinstance(target, dict) else getattr(target, part, None)
        if target is None:
            return False
    wrapped = getattr(target, "__wrapped__", None)
    return hasattr(target, "cache_clear") and getattr(wrapped, "__code__", None) is code


_PLAIN = (str, bytes, int, float, bool, type(None))


def _fingerprint(inputs: tuple[Any, ...]) -> int | None:
    """A hash of plain positional and keyword values; None when any value is an object (a session, a
    request: new in every request, so never the same inputs)."""
    args, kwargs = inputs
    values = (*args, *kwargs.values())
    if not all(isinstance(v, _PLAIN) for v in values):
        return None
    return hash((args, tuple(sorted(kwargs.items()))))


# Library helpers that build a watched object for one call and close it: the app called the helper,
# it built nothing of its own (a blocking requests.get in an async route is that call's finding).
ONE_SHOT_HELPERS = frozenset({("requests.api", "request")})

# Where libraries build the objects watched here: a blocking call made while one is built (SQLAlchemy
# importing its dialect, reading a file) is part of that rebuild, which the rebuild finding names.
BUILDERS = frozenset(
    {
        ("sqlalchemy.engine.create", "create_engine"),
        ("sqlalchemy.ext.asyncio.engine", "create_async_engine"),
        ("httpx._client", "__init__"),
        ("asyncpg.pool", "create_pool"),
        ("asyncpg.connection", "connect"),
        ("databases.core", "connect"),
    }
)
