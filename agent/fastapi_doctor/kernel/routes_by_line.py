"""The routes that ran one line of the app: one mistake shared by several routes is one finding.

A line in a dependency or a helper runs on every route that uses it. A mistake there (an engine built
per request, a connection never released) is one finding at the line (``Verdict.per_line``), on the
route that ran it most, naming every route that did. The signals that decide such findings count the
routes here; bounded in lines and in routes per line.
"""

from __future__ import annotations

from collections.abc import Hashable

MAX_LINES = 1_000
MAX_ROUTES_PER_LINE = 20  # routes named in one finding's evidence


class RoutesByLine:
    """Per line (any hashable key: a location, or a location and what happened there), how many times
    each route (method and template) ran it."""

    def __init__(self) -> None:
        self._counts: dict[Hashable, dict[tuple[str | None, str | None], int]] = {}

    def add(self, line: Hashable, method: str | None, route: str | None) -> tuple[str | None, str | None, tuple[str, ...]]:
        """Count one more run of ``line`` by ``method`` ``route``. Returns the method and route that ran
        it most, and every route that ran it (``METHOD /template``, most first)."""
        counts = self._counts.get(line)
        if counts is None:
            if len(self._counts) >= MAX_LINES:
                return method, route, (_named(method, route),) if route is not None else ()
            counts = self._counts[line] = {}
        payer = (method, route)
        if payer in counts or len(counts) < MAX_ROUTES_PER_LINE:
            counts[payer] = counts.get(payer, 0) + 1
        ranked = sorted(counts, key=counts.__getitem__, reverse=True)
        top_method, top_route = ranked[0] if ranked else payer
        return top_method, top_route, tuple(_named(m, r) for m, r in ranked if r is not None)

    def clear(self) -> None:
        self._counts.clear()


def _named(method: str | None, route: str) -> str:
    return f"{method} {route}" if method else route
