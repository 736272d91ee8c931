"""The routes of an app as the user declared them: every endpoint with its full route template.

Real apps declare routes on ``APIRouter``s joined by ``include_router`` (often nested, each with a
prefix) and mount sub-apps. How the app keeps them differs between FastAPI versions: before 0.137
``include_router`` copies each route into the parent with the prefix already in its path; from 0.137
``app.routes`` holds one ``_IncludedRouter`` per include (the router's own routes, its
prefix in the include context). :func:`endpoints` reads every form, and mounted apps (a ``Mount``'s
routes, prefixed with its path), so the signals know every endpoint's code.

An included router is read through its own routes and its include prefix (FastAPI joins them the same
way, ``prefix + route.path``), not through FastAPI's public ``iter_route_contexts``: that one builds
every included route's effective copy (its dependant, validators and serializers), which FastAPI
otherwise builds per router only when a request first reaches it. On a 1,000-route app walking it at
start-up doubled the app's objects (about 160,000 more for the cyclic collector to traverse) before the
app had served a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

# Deeper than any real app's routers; guards against a router reachable from itself.
_MAX_DEPTH = 32


def endpoints(app: Any) -> Iterator[tuple[str, Any]]:
    """(route template, endpoint callable) of every route of ``app``, outermost router first."""
    yield from _walk(getattr(app, "routes", None) or (), "", 0)


def _walk(routes: Iterable[Any], prefix: str, depth: int) -> Iterator[tuple[str, Any]]:
    if depth > _MAX_DEPTH:
        return
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:  # FastAPI 0.137+: one entry per include_router
            context = getattr(route, "include_context", None)
            include_prefix = getattr(context, "prefix", "") or ""
            yield from _walk(getattr(included, "routes", None) or (), prefix + include_prefix, depth + 1)
            continue
        path = getattr(route, "path", None)
        endpoint = getattr(route, "endpoint", None)
        if endpoint is not None and isinstance(path, str):
            template = getattr(route, "path_format", None)
            yield prefix + (template if isinstance(template, str) else path), endpoint
            continue
        sub = getattr(route, "routes", None)  # a Mount (of a router or an app) or a Host
        if sub:
            yield from _walk(sub, prefix + path if isinstance(path, str) else prefix, depth + 1)


def dispatch_codes(app: Any) -> list[Any]:
    """Code of the app's router dispatch (``Router.app`` and its overrides): every endpoint runs below
    it, so a block found under it is the route's, even for a route added after the app started."""
    router = getattr(app, "router", None)
    codes = []
    for klass in type(router).__mro__ if router is not None else ():
        method = klass.__dict__.get("app")
        code = getattr(method, "__code__", None)
        if code is not None:
            codes.append(code)
    return codes
