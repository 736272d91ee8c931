"""``task_leak``: asyncio tasks that outlive their request and pile up, or are destroyed while pending.

Decided on facts the tasks signal counts, never on a duration alone:

* a task created inside a request is still pending ``task_leak_seconds`` after that request finished
  (fire-and-forget work that never ends, or ends long after anyone waits for it);
* a pending task was destroyed by the garbage collector ("Task was destroyed but it is pending!"):
  nothing kept a reference to it, so its work was cut off mid-flight.

Not findings: tasks created outside any request (workers started in the lifespan, however many and
however old), tasks that finish within their request (``asyncio.gather``, ``TaskGroup``), tasks that
finish shortly after it (a short fire-and-forget), and tasks of libraries and the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi_doctor.diagnosis import Decides, Verdict, verdict_on
from fastapi_doctor.observations import CreatorCounted, CreatorObservation

if TYPE_CHECKING:
    from fastapi_doctor.config import Settings

ROOT_CAUSE = "task_leak"
TITLE = "Asyncio tasks that leak or pile up"


def decides(settings: Settings) -> Decides:
    return {CreatorCounted: lambda counted: decide(counted.now, counted.before, leak_seconds=counted.leak_seconds)}


def decide(
    now: CreatorObservation, before: CreatorObservation | None, *, leak_seconds: float
) -> Verdict | None:
    """A verdict when this creator left new tasks pending past the limit, or lost pending ones."""
    aged = now.aged - (before.aged if before else 0)
    destroyed = now.destroyed_pending - (before.destroyed_pending if before else 0)
    if aged <= 0 and destroyed <= 0:
        return None
    where = f" created at {now.location}" if now.location else ""
    if destroyed > 0:
        reason = "destroyed_pending"
        summary = (
            f"{now.destroyed_pending} task(s) running {now.coroutine}{where} were destroyed while still "
            f"pending: nothing kept a reference to them, so the garbage collector cut their work off. Keep a "
            f"reference and await or cancel the task (a TaskGroup, a set of tasks discarded on completion), "
            f"or use BackgroundTasks for work after the response."
        )
    else:
        reason = "outlived_request"
        by = f" by {now.method} {now.route}" if now.route else ""
        summary = (
            f"Tasks running {now.coroutine}{where} are created{by} and outlive their request: "
            f"{now.alive} still pending, the oldest {now.oldest_age_s:.0f} s old "
            f"({now.growth_per_minute:+.0f} a minute). Nothing awaits or cancels them, so they pile up with "
            f"traffic. Await them in the request, run them in a TaskGroup, hand them to a bounded queue with "
            f"workers started in the lifespan, or use BackgroundTasks."
        )
    return verdict_on(
        now,
        root_cause=ROOT_CAUSE,
        summary=summary,
        evidence={
            "reason": reason,
            "coroutine": now.coroutine,
            "alive": now.alive,
            "oldest_age_s": round(now.oldest_age_s, 3),
            "growth_per_minute": round(now.growth_per_minute, 1),
            "created": now.created,
            "outlived_request": now.outlived,
            "pending_past_limit": now.aged,
            "destroyed_pending": now.destroyed_pending,
            "exceptions_never_retrieved": now.never_retrieved,
            "task_leak_seconds": leak_seconds,
            "routes": list(now.routes),
        },
    )
