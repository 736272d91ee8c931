"""N+1 queries: statements per request by fingerprint (``n_plus_one``, ``fastapi_doctor.db.statements``).

Fed by SQLAlchemy's ``do_execute`` dialect events (see :mod:`fastapi_doctor.signals.db`). Only requests
that run statements pay anything: a dict of fingerprint -> executions in the request's signal data.
The user's line is taken once per fingerprint, when its count reaches the threshold (inside the loop).
Fingerprints carry no parameter values.
"""

from __future__ import annotations

from typing import Any

from fastapi_doctor.context import RequestState, current_request
from fastapi_doctor.findings import Location
from fastapi_doctor.signals.db_pool import histogram, user_location
from fastapi_doctor.sql import fingerprint

_COUNTS = "db.statements"
_LOCATIONS = "db.n_plus_one_locations"
_STATEMENT_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


class QueryCounter:
    def __init__(self, agent: Any) -> None:
        self.findings = agent.findings
        self.threshold = int(agent.settings.n_plus_one_threshold)
        self.statements = histogram(
            agent,
            "fastapi_doctor.db.statements",
            unit="{statement}",
            description="SQL statements executed per request (requests that ran at least one).",
            boundaries=_STATEMENT_BUCKETS,
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
            locations[key] = user_location()

    def finished(self, state: RequestState) -> None:
        data = state.data
        if not data:
            return
        counts = data.get(_COUNTS)
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
        locations = data.get(_LOCATIONS)
        if not locations:
            return
        for key, location in locations.items():
            n = counts[key]
            short = key if len(key) <= 120 else key[:117] + "..."
            self.findings.report(
                "n_plus_one",
                route=route,
                method=state.method,
                summary=(
                    f"One statement ran {n} times in one request (threshold {self.threshold}): `{short}`. "
                    "Load the rows in one query (WHERE ... IN, a join, or selectinload) instead of one per row."
                ),
                evidence={
                    "fingerprint": key,
                    "executions": n,
                    "threshold": self.threshold,
                    "statements_in_request": total,
                    "distinct_statements": len(counts),
                },
                location=location,
            )
