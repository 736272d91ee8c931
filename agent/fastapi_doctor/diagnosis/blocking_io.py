"""``blocking_io``: a call that blocks where the app needs to go on (the event loop, the threadpool,
a database connection).

Decided on facts, never on a slow request alone:

* the loop watchdog caught the loop blocked past ``FASTAPI_DOCTOR_BLOCK_MS`` and its samples agree on
  the app's line (:class:`LoopBlock`; the noise is taken off before: the process paused, the collector
  ran, another thread held the interpreter, start-up). A block inside a middleware or while serialising
  a response is that root cause's verdict, with its words. Once is not a recurring problem: the first
  block of a line is held until it recurs (:func:`recurring`), except in a test suite;
* a blocking call seen on the loop inside a request (:class:`BlockingCall`): intercepted (under pytest,
  ``call_interception``), or a statement sent through a sync SQLAlchemy dialect on the loop's thread
  (``sync_statement_on_loop``), however short;
* every threadpool thread busy for ``threadpool_wait_s`` while tasks waited (:class:`ThreadpoolSaturated`),
  unless most threads wait for a database connection (the pool's verdict);
* a database pool saturated while the threads holding its connections wait in one call outside the
  database (:class:`HeldAcrossCall`): that call, not the pool, is the cause.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from fastapi_doctor.diagnosis import Decides, Verdict, large_payload, pool_leak, slow_middleware, verdict_on, where_text
from fastapi_doctor.observations import (
    CALL_INTERCEPTION,
    SYNC_STATEMENT_ON_LOOP,
    BlockingCall,
    HeldAcrossCall,
    LoopBlock,
    ThreadpoolSaturated,
)

if TYPE_CHECKING:
    from fastapi_doctor.config import Settings

ROOT_CAUSE = "blocking_io"
TITLE = "Blocking call in async code"
# How a BlockingCall was seen: both are facts (the call happened on the loop), not durations.
DETECTED_AS_FACT = frozenset({CALL_INTERCEPTION, SYNC_STATEMENT_ON_LOOP})
# Under the pytest plugin a timing finding of this cause fails its test too: the loop watchdog is the only
# judge of CPU-bound blocks (a hash, a parse), which no call interception sees.
TIMING_FAILS_IN_TESTS = True


def basis(evidence: dict[str, Any]) -> str:
    """``fact`` for an intercepted call or a sync statement on the loop; ``timing`` for a block the
    watchdog measured."""
    return "fact" if evidence.get("detected_by") in DETECTED_AS_FACT else "timing"
_OFF_THE_LOOP = "Use an async equivalent, or move it off the loop (run_in_threadpool, or a sync def endpoint)."


def decides(settings: Settings) -> Decides:
    test_mode = settings.test_mode
    return {
        LoopBlock: lambda block: decide_recurring(block, test_mode=test_mode),
        BlockingCall: decide_blocking_call,
        ThreadpoolSaturated: decide_threadpool,
        HeldAcrossCall: decide_held_across_call,
    }


def recurring(episodes: int, *, test_mode: bool) -> bool:
    """Once is not a recurring problem (a route's first call warming a cache, the first
    /openapi.json); in a test a request is made once, and there the first occurrence is the finding."""
    return test_mode or episodes >= 2


def decide_recurring(block: LoopBlock, *, test_mode: bool) -> list[Verdict]:
    """A block of the loop, once it recurs: a line's first block is held (:func:`recurring`) and
    published with its second, at the second's line (one finding for the function's block)."""
    if not recurring(block.episodes, test_mode=test_mode):
        return []
    first = block.first
    verdicts = []
    if first is not None and not recurring(first.episodes, test_mode=test_mode):
        verdicts.append(dataclasses.replace(decide_loop_block(first), location=block.location))
    verdicts.append(decide_loop_block(block))
    return verdicts


def decide_loop_block(block: LoopBlock) -> Verdict:
    blocked_ms = round(block.blocked_s * 1000.0, 1)
    where = where_text(block.method, block.route) if block.in_request else "a task outside any request"
    what = block.call or block.location.function
    if block.root_cause == large_payload.ROOT_CAUSE:
        summary = large_payload.loop_block_summary(where, blocked_ms)
    elif block.root_cause == slow_middleware.ROOT_CAUSE:
        summary = slow_middleware.loop_block_summary(block.middleware, what, where, blocked_ms)
    else:
        summary = (
            f"{what} blocked the event loop for {blocked_ms:.0f} ms in {where}; every concurrent request waited. "
            + _OFF_THE_LOOP
        )
    evidence = {
        "blocked_ms": blocked_ms,
        "max_blocked_ms": block.max_blocked_ms,
        "threshold_ms": round(block.threshold_s * 1000.0, 1),
        "call": block.call,
        "samples": block.samples,
        "samples_total": block.samples_total,
        "episodes": block.episodes,
    }
    if block.middleware:
        evidence["middleware"] = block.middleware
    return verdict_on(
        block,
        root_cause=block.root_cause,
        summary=summary,
        evidence=evidence,
    )


def decide_blocking_call(seen: BlockingCall) -> Verdict:
    where = where_text(seen.method, seen.route)
    return Verdict(
        root_cause=ROOT_CAUSE,
        route=seen.route,
        method=seen.method,
        summary=(
            f"{seen.call} is a blocking call made on the event loop in {where}; while it runs every "
            "concurrent request waits. Use an async equivalent, or move it off the loop "
            "(run_in_threadpool, or a sync def endpoint)."
        ),
        location=seen.location,
        evidence={"call": seen.call, "blocking_function": seen.blocking_function, "detected_by": seen.detected_by},
    )


def decide_threadpool(seen: ThreadpoolSaturated) -> Verdict | None:
    if seen.threads_waiting_for_a_connection and 2 * seen.threads_waiting_for_a_connection >= seen.busy:
        # Most threads wait for a database connection: the pool is the bottleneck, and the database
        # signal, which sees the pool and the threads, names its cause (the pool, or the line that
        # holds connections while it blocks) with this saturation among the symptoms.
        return None
    top = seen.holders[0] if seen.holders else None
    holding = ", ".join(f"{method} {route} ({n})" for method, route, n in seen.holders[:5]) or "tasks outside any request"
    what = f" Most threads were in {seen.call}." if seen.call else ""
    return Verdict(
        root_cause=ROOT_CAUSE,
        route=top[1] if top else None,
        method=top[0] if top else None,
        summary=(
            f"All {seen.limit} threadpool threads were busy for {seen.saturated_s:.1f} s and up to {seen.waiting} "
            f"tasks waited for one; threads were held by {holding}.{what} Sync endpoints and dependencies share "
            "anyio's threads: make the slow call async, or raise the limit "
            "(anyio.to_thread.current_default_thread_limiter().total_tokens)."
        ),
        location=seen.location,
        evidence={
            "signal": "threadpool",
            "limit": seen.limit,
            "busy": seen.busy,
            "waiting": seen.waiting,
            "saturated_s": round(seen.saturated_s, 2),
            "threads_held": top[2] if top else 0,
            "routes": {route: n for _method, route, n in seen.holders[:10]},
            "call": seen.call,
            "threads_in_call": seen.threads_in_call,
        },
    )


def decide_held_across_call(seen: HeldAcrossCall) -> Verdict:
    saturated = seen.saturated
    top = saturated.holders[0] if saturated.holders else None
    return Verdict(
        root_cause=ROOT_CAUSE,
        route=top.route if top else None,
        summary=(
            f"{seen.call or 'A blocking call'} at {seen.location} holds a database connection while it waits: "
            f"{seen.threads_in_call} threads were in it, every connection of pool {saturated.pool} was in use for "
            f"{saturated.saturated_s:.1f} s and up to {saturated.waiting} callers waited for one. Make the call "
            "async or give it a timeout, and do not keep a session open across it."
        ),
        location=seen.location,
        evidence={
            "signal": "db_pool",
            "call": seen.call,
            "threads_in_call": seen.threads_in_call,
            **pool_leak.saturation_symptoms(saturated),
        },
    )
