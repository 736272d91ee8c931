"""``n_plus_one``: one statement run again and again in one request.

Decided per request on what the query counter saw: a statement fingerprint (no parameter values) that
ran ``n_plus_one_threshold`` times or more in one request, with the user's line that loops over it.
Not findings: many different statements, or one statement run once per request however slow.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from fastapi_doctor.diagnosis import Decides, Verdict, verdict_on
from fastapi_doctor.observations import RepeatedStatement

if TYPE_CHECKING:
    from fastapi_doctor.config import Settings

ROOT_CAUSE = "n_plus_one"
TITLE = "N+1 queries"


def decides(settings: Settings) -> Decides:
    return {RepeatedStatement: functools.partial(decide, threshold=int(settings.n_plus_one_threshold))}


def decide(seen: RepeatedStatement, *, threshold: int) -> Verdict | None:
    if seen.executions < threshold:
        return None
    short = seen.fingerprint if len(seen.fingerprint) <= 120 else seen.fingerprint[:117] + "..."
    return verdict_on(
        seen,
        root_cause=ROOT_CAUSE,
        summary=(
            f"One statement ran {seen.executions} times in one request (threshold {threshold}): `{short}`. "
            "Load the rows in one query (WHERE ... IN, a join, or selectinload) instead of one per row."
        ),
        evidence={
            "fingerprint": seen.fingerprint,
            "executions": seen.executions,
            "threshold": threshold,
            "statements_in_request": seen.statements_in_request,
            "distinct_statements": seen.distinct_statements,
        },
    )
