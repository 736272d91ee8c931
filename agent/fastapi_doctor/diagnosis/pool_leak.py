"""``pool_leak``: connections not returned to their pool, or a pool too small for the load.

Decided on facts the database signals see, never on a slow query alone:

* a connection checked out and never returned: the garbage collector returned it
  (``garbage_collected``), it is still out ``leak_seconds`` after its request finished
  (``request_finished``), or held longer than ``leak_seconds`` (``held_too_long``);
* a checkout that timed out waiting on an exhausted pool (``pool_exhausted``), or most recent asyncpg
  acquires found every connection in use and waited (``pool_exhausted``, median wait in the evidence);
* every connection in use for ``pool_wait_s`` without a break while callers waited (``pool_wait``),
  when the pool is the bottleneck: the pool is too small for the concurrency, or connections are
  held too long. When the threads holding them wait in one call outside the database, that call is
  the cause: a ``blocking_io`` verdict (:func:`fastapi_doctor.diagnosis.blocking_io.decide_held_across_call`).

A saturated pool is not yet a pool too small. Waiting for a connection is a problem when a larger
pool would serve more, and a queue forms wherever the scarce resource is: with 33 clients on a
2-core machine and sync routes on a pool of 5 + 10, the threads holding the 15 connections are slow
because they wait for the CPU (and the GIL) behind each other, and the few callers that also wait
for a connection wait behind them. More connections would only add holders waiting for the same
CPU. What tells the two apart is where requests queue, by Little's law: callers waiting for a
connection, on average over the episode's rounds, per connection held is the ratio of the time a
request waits for a connection to the time it holds one. At ``WAITS_PER_CONNECTION`` (1) or more,
requests spend at least as long in the pool's queue as using a connection: the pool is where they
queue (pool_size=2, max_overflow=0 under the same 33 clients: 18 waiting for 2). Below it the queue
is elsewhere (2 waiting for 15 in the healthy case, measured on the trial of the full-stack
template).

Nor is it the pool when the CPU is: when the process's threads were on a CPU or ready and waiting
for one for at least as many cores' worth as it may use (``cpu_busy`` >= ``cpus``: run queue
included, so a database or a neighbour on the same cores counts too), every core had a thread of
the app to run, and more connections would add threads to that queue (an N+1 route holding each
connection for 51 round trips, 32 clients, 2 cores: 5.9 cores' worth; the report of an in-process
SQLite computed by 15 threads). Busy is not enough on its own: a cheap route served on the loop
takes whatever CPU the pool's callers leave, so a starved pool shows a busy process too (1.2 cores'
worth with pool_size=2 on 2 cores, 1.0 in the async app), below the cores it could use.

Nor is it the pool when its event loop is. An asyncpg pool serves the one event loop it was made on,
and its holders run on that loop between their queries: when the loop has a queue, a holder's query
result waits in it, so every hold stretches with the loop's own queue, callers wait for a connection
whichever is the bottleneck, and neither the callers waiting per connection nor the process's CPU
demand (one loop thread: at most one core of two) tells them apart. What does is the loop thread's
busy share: the wall time it was on a CPU or waiting for one (schedstat, read by the loop's
heartbeat) over the stretch the waits cover. At ``LOOP_BUSY`` (0.9) or more the loop always had
work: more connections would add holders waiting for the same loop (the realworld example app on
FastAPI 0.100, asyncpg 0.27, a pool of 10, 33 clients, one worker on 2 shared cores: 0.92 to 1.00 a
second; the notes app on `databases`: 0.99 to 1.00; the test app's digest route, pools of 3 and 10
under 32 clients: 0.99 to 1.00 over every stretch of 0.1 s or more, while 22 to 29 callers waited on
average). A pool too small beside an idle loop shows the loop waiting with the callers (holders
awaiting 50 ms of slow work: 0.09 to 0.31; 10 ms: 0.33 to 0.47; a pool exhausted by a leak: 0.01). A
stretch shorter than ``LOOP_MEASURED_S`` is not decided yet (the waits just began; the heartbeat's
ticks are 50 ms apart); an unknown share (no heartbeat on the pool's loop) does not hold a finding
back.

A dependency waiting for a connection, or a threadpool full of threads waiting for one, is this root
cause's symptom, not another finding; so is a pool whose connections are mostly held by leaks already
found (the realworld app with its connection dependency leaking: its 10 connections leaked, 33
callers waiting), though a checkout that times out there is still reported, naming the holders.

One leak is one finding: a connection dependency that never releases leaks on every route that uses
it, at one line; the finding is that line's (``Verdict.per_line``), naming the routes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from fastapi_doctor.diagnosis import Decides, Verdict, verdict_on
from fastapi_doctor.diagnosis import FirstNamed as FirstNamed  # what the registry keeps a pool's place with
from fastapi_doctor.observations import (
    AcquiresWaited,
    CheckoutHeld,
    CheckoutTimedOut,
    Holder,
    PoolSaturated,
)

if TYPE_CHECKING:
    from fastapi_doctor.config import Settings

ROOT_CAUSE = "pool_leak"
TITLE = "Connection leaks, bad pooling"
MAX_HOLDERS = 5  # holders named in the evidence
# A saturated pool is the bottleneck when, on average over the episode, at least this many callers
# wait per connection (Little's law: callers then wait at least as long for a connection as they hold
# one).
WAITS_PER_CONNECTION = 1.0
# An asyncpg pool's acquires waiting on one event loop busy (on a CPU or waiting for one) for at least
# this share of the wall time queue at the loop, not at the pool.
LOOP_BUSY = 0.9
# ... measured over at least this long (two heartbeat ticks at the default 50 ms): over less, the CPU
# clocks' granularity is a large part of the measure.
LOOP_MEASURED_S = 0.1


def basis(evidence: dict[str, Any]) -> str:
    """``timing`` for a connection held longer than the threshold; ``fact`` for one never returned, a
    pool exhausted or a wait."""
    return "timing" if evidence.get("reason") == "held_too_long" else "fact"


def decides(settings: Settings) -> Decides:
    return {
        CheckoutHeld: functools.partial(decide_held, leak_seconds=float(settings.leak_seconds)),
        CheckoutTimedOut: decide_timed_out,
        # A pool-wide verdict keeps the route and line it was first published with.
        PoolSaturated: lambda saturated: _keeping_place(decide_saturated(saturated), saturated.pool),
        AcquiresWaited: lambda waited: _keeping_place(decide_acquires(waited), waited.pool),
    }


def _keeping_place(verdict: Verdict | None, pool: str) -> Verdict | None:
    return None if verdict is None else dataclasses.replace(verdict, keeps_place_of=pool)


def decide_held(held: CheckoutHeld, *, leak_seconds: float) -> Verdict:
    """One finding per checkout line (a leaking dependency leaks on every route that uses it), naming
    the routes that leaked there; per route where the line is unknown."""
    where = f" at {held.location}" if held.location else ""
    several = len(held.routes) > 1
    if several:
        on = f" on {len(held.routes)} routes ({', '.join(held.routes[:3])}{', ...' if len(held.routes) > 3 else ''})"
    else:
        on = f" on {held.route}" if held.route else ""
    if held.reason == "garbage_collected":
        summary = (
            f"A connection of pool {held.pool} checked out{where}{on} was never closed: the garbage "
            f"collector returned it after {held.age_s:.2f} s. Close sessions and connections (`with`/`async with`, "
            "or a dependency with `yield`)."
        )
    elif held.reason == "request_finished":
        summary = (
            f"A connection of pool {held.pool} checked out{where}{on} is still checked out "
            f"{held.age_s:.2f} s later, after its request finished: it is not returned to the pool."
        )
    else:
        summary = (
            f"A connection of pool {held.pool} checked out{where}{on} has been held for {held.age_s:.2f} s "
            f"(limit {leak_seconds:g} s)."
        )
    verdict = verdict_on(
        held,
        root_cause=ROOT_CAUSE,
        summary=summary,
        evidence={
            "reason": held.reason,
            "pool": held.pool,
            "age_s": round(held.age_s, 3),
            "leak_seconds": leak_seconds,
            **({"routes": list(held.routes)} if several else {}),
            **held.occupancy,
        },
    )
    return dataclasses.replace(verdict, per_line=held.location is not None)


def decide_timed_out(timed_out: CheckoutTimedOut) -> Verdict:
    summary = (
        f"Pool {timed_out.pool} is exhausted: a checkout waited {timed_out.waited_s:.2f} s and timed out"
        + _waiting_on(timed_out.route, timed_out.holders)
        + ". Return connections promptly (close sessions) or size the pool for the load."
    )
    # The finding is where the checkout failed; the holders (routes and lines) are in its evidence.
    return verdict_on(
        timed_out,
        root_cause=ROOT_CAUSE,
        summary=summary,
        evidence={
            "reason": "pool_exhausted",
            "pool": timed_out.pool,
            "waited_s": round(timed_out.waited_s, 3),
            "waiting_route": timed_out.route,
            "holders": holders_evidence(timed_out.holders),
            **timed_out.occupancy,
        },
    )


def decide_acquires(waited: AcquiresWaited) -> Verdict | None:
    """Due when at least half of the recent acquires waited on a full pool, and the pool's event loop
    was not where they queued (see the module's docstring). An unknown loop share does not hold the
    finding back."""
    if 2 * waited.waits < waited.acquires or exhausted_by_leaks(waited.leaked, waited.max_connections):
        return None
    if waited.loop_busy is not None:
        if waited.loop_measured_s < LOOP_MEASURED_S:
            return None  # not yet: the stretch of waits just began; a later acquire decides
        if waited.loop_busy >= LOOP_BUSY:
            return None  # the queue is at the loop: more connections would add holders waiting for it
    summary = (
        f"Pool {waited.pool} (max {waited.max_connections} connections) is exhausted: {waited.waits} of the last "
        f"{waited.acquires} acquires found every connection in use and waited (median wait {waited.wait_p50_s:.3f} s)"
        + _waiting_on(waited.route, waited.holders)
        + ". Hold a connection only for its queries (`async with pool.acquire()`), or size the pool for the load."
    )
    return verdict_on(
        waited,
        root_cause=ROOT_CAUSE,
        summary=summary,
        evidence={
            "reason": "pool_exhausted",
            "pool": waited.pool,
            "waited_s": round(waited.wait_p50_s, 3),
            "waits_on_full_pool": waited.waits,
            "acquires": waited.acquires,
            "waiting_route": waited.route,
            "holders": holders_evidence(waited.holders),
            **({"loop_busy": round(waited.loop_busy, 2)} if waited.loop_busy is not None else {}),
            **waited.occupancy,
        },
    )


def exhausted_by_leaks(leaked: int, max_connections: int) -> bool:
    """At least half of the pool's connections are held by leaks already reported: callers waiting on
    it are the leak's symptom, and the leak's finding (at its line) is the one to fix."""
    return leaked > 0 and 2 * leaked >= max_connections


def pool_is_the_bottleneck(saturated: PoolSaturated) -> bool:
    """Whether a larger pool would serve more: callers queue at the pool longer than they hold a
    connection, and not at the CPU (see the module's docstring). Unknown measures do not hold a
    finding back."""
    if saturated.mean_waiting is not None and saturated.mean_waiting < WAITS_PER_CONNECTION * saturated.max_connections:
        return False  # callers queue elsewhere
    if saturated.cpu_busy is not None and saturated.cpus and saturated.cpu_busy >= saturated.cpus:
        return False  # the CPU is where they queue: every core had a thread of the app to run
    if saturated.loop_busy is not None and saturated.loop_busy >= LOOP_BUSY:
        return False  # the pool's event loop is where they queue
    return True


def decide_saturated(saturated: PoolSaturated) -> Verdict | None:
    if not pool_is_the_bottleneck(saturated) or exhausted_by_leaks(saturated.leaked, saturated.max_connections):
        return None
    demand = saturated.max_connections + saturated.waiting  # every connection in use, and these callers wanting one
    top = saturated.holders[0] if saturated.holders else None
    summary = (
        f"Pool {saturated.pool} (pool_size={saturated.pool_size}, max_overflow={saturated.max_overflow}: "
        f"{saturated.max_connections} connections) had every connection in use for {saturated.saturated_s:.1f} s "
        f"without a break while up to {saturated.waiting} callers waited: about {demand} needed a connection at "
        f"once. Connections are held by {named_holders(saturated.holders) or 'nobody known'}. Size the pool for "
        f"the concurrency (pool_size + max_overflow >= {demand}, within the database's max_connections), or hold "
        "connections for less time (close sessions before slow work)."
    )
    return Verdict(
        root_cause=ROOT_CAUSE,
        route=top.route if top else None,
        summary=summary,
        location=top.location if top else None,
        evidence={
            "reason": "pool_wait",
            **saturation_symptoms(saturated),
            "demand": demand,
            "pool_size": saturated.pool_size,
            "max_overflow": saturated.max_overflow,
            "checked_out": saturated.checked_out,
            **({"mean_waiting": round(saturated.mean_waiting, 1)} if saturated.mean_waiting is not None else {}),
            **({"process_cpu_busy": round(saturated.cpu_busy, 2)} if saturated.cpu_busy is not None else {}),
            **({"cpus": saturated.cpus} if saturated.cpus else {}),
            **({"loop_busy": round(saturated.loop_busy, 2)} if saturated.loop_busy is not None else {}),
        },
    )


def saturation_symptoms(saturated: PoolSaturated) -> dict[str, Any]:
    """What a saturated pool shows, in the evidence of its finding (or of the blocking call behind it)."""
    return {
        "pool": saturated.pool,
        "max_connections": saturated.max_connections,
        "waiting": saturated.waiting,
        "saturated_s": round(saturated.saturated_s, 2),
        "threads_waiting_for_a_connection": saturated.threads_waiting,
        "holders": holders_evidence(saturated.holders),
    }


def _waiting_on(route: str | None, holders: tuple[Holder, ...]) -> str:
    """`` on <route>; connections are held by <holders>``, the parts that are known."""
    named = named_holders(holders)
    return (f" on {route}" if route else "") + (f"; connections are held by {named}" if named else "")


def named_holders(holders: tuple[Holder, ...]) -> str:
    return ", ".join(
        f"{h.route or '(no request)'} x{h.connections}" + (f" at {h.location}" if h.location else "")
        for h in holders[:3]
    )


def holders_evidence(holders: tuple[Holder, ...]) -> list[dict[str, Any]]:
    return [
        {
            "route": h.route,
            "connections": h.connections,
            "oldest_age_s": round(h.oldest_age_s, 3),
            "location": str(h.location) if h.location else None,
        }
        for h in holders[:MAX_HOLDERS]
    ]

