"""N+1 queries: statements per request by fingerprint (``n_plus_one``, ``fastapi_doctor.db.statements``).

Fed by the dialects' wrapped ``do_execute`` methods (see :mod:`fastapi_doctor.signals.database.db`) and asyncpg's
statements (:mod:`fastapi_doctor.signals.database.asyncpg_pool`). Only requests
that run statements pay anything: a dict of fingerprint -> executions in the request's signal data.
The user's line is taken once per fingerprint, when its count reaches the threshold: the line of the
user's loop that runs it (:func:`~fastapi_doctor.kernel.frames.loop_location`), also when a repository function called per row sends it.
Fingerprints carry no parameter values.
"""

from __future__ import annotations

from typing import Any

from fastapi_doctor.context import RequestState, current_request
from fastapi_doctor.findings import Location
from fastapi_doctor.kernel.frames import loop_location
from fastapi_doctor.kernel.metrics import MEAN_ONLY, histogram
from fastapi_doctor.observations import RepeatedStatement
from fastapi_doctor.sql import fingerprint

_COUNTS = "db.statements"
_LOCATIONS = "db.n_plus_one_locations"


class QueryCounter:
    def __init__(self, agent: Any) -> None:
        self.report = agent.report
        self.threshold = int(agent.settings.n_plus_one_threshold)
        self.statements = histogram(
            agent,
            "fastapi_doctor.db.statements",
            unit="{statement}",
            description="SQL statements executed per request (requests that ran at least one).",
            boundaries=MEAN_ONLY,
        )
        self._route_attrs: dict[str | None, dict[str, str]] = {}

    def on_statement(self, statement: str) -> None:
        state = current_request.get()
        if state is None:
            return
        data = state.signal_data()
        counts: dict[str, int] | None = data.get(_COUNTS)
        if counts is None:
            counts = data[_COUNTS] = {}
        key = fingerprint(statement)
        n = counts.get(key, 0) + 1
        counts[key] = n
        if n == self.threshold:
            locations: dict[str, Location | None] = data.setdefault(_LOCATIONS, {})
            locations[key] = loop_location()

    def finished(self, state: RequestState) -> None:
        data = state.data
        if not data:
            return
        # Taken, not read: the asyncpg signal's counter shares these counts (a request's statements add
        # up whichever client sent them), and its hook must not record them a second time.
        counts = data.pop(_COUNTS, None)
        if not counts:
            return
        total = sum(counts.values())
        route = state.route
        attrs = self._route_attrs.get(route)
        if attrs is None:
            attrs = {} if route is None else {"http.route": route}
            if len(self._route_attrs) < 10000:
                self._route_attrs[route] = attrs
        self.statements.record(total, attrs)
        locations = data.pop(_LOCATIONS, None)
        if not locations:
            return
        for key, location in locations.items():
            self.report(RepeatedStatement(
                fingerprint=key,
                executions=counts[key],
                location=location,
                statements_in_request=total,
                distinct_statements=len(counts),
                method=state.method,
                route=route,
            ))
