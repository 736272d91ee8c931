"""anyio's worker threads: busy, waiting and the limit, and saturation as ``blocking_io``.

Sync endpoints, sync dependencies and ``run_in_threadpool`` share one capacity limiter per event loop
(40 threads by default). Its statistics must be read on the loop: they are sampled on the heartbeat
(see :mod:`fastapi_doctor.signals.eventloop`) and published through observable gauges. Tasks waiting
for a thread for ``FASTAPI_DOCTOR_THREADPOOL_WAIT_SECONDS`` without a break make one finding per
episode, naming the routes holding the threads and the line most of the worker threads are in. When
most threads wait for a database pool connection, the pool is the bottleneck: the database signal
reports the cause (the pool, or the line holding connections while it blocks), not this one.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

from fastapi_doctor import containment
from fastapi_doctor.context import active_requests
from fastapi_doctor.observations import ThreadpoolSaturated
from fastapi_doctor.kernel.loop import hub
from fastapi_doctor.kernel.workers import worker_lines, worker_threads

_current: ThreadpoolSignal | None = None


class _Pool:
    """Per-loop state, written on the loop's heartbeat only."""

    __slots__ = ("busy", "waiting", "limit", "since", "max_waiting", "reported")

    def __init__(self) -> None:
        self.busy = 0
        self.waiting = 0
        self.limit = 0
        self.since: float | None = None
        self.max_waiting = 0
        self.reported = False


def _observe(field: str) -> Any:
    def callback(_options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        signal = _current
        if signal is None:
            return []
        total = signal.total(field)
        return [] if total is None else [Observation(total)]

    callback.__qualname__ = f"threadpool.{field}"
    return callback


# Module-level callbacks: a second instrument() in the same process gets the same instruments back.
_CALLBACKS = {field: _observe(field) for field in ("busy", "waiting", "limit")}


class ThreadpoolSignal:
    name = "threadpool"

    def __init__(self) -> None:
        self.agent: Any = None
        self.wait_s = 2.0

    def instrument(self, agent: Any) -> None:
        global _current
        self.agent = agent
        self.wait_s = agent.settings.threadpool_wait_seconds
        meter = agent.meter
        meter.create_observable_gauge(
            "fastapi_doctor.threadpool.busy",
            callbacks=[_CALLBACKS["busy"]],
            unit="{thread}",
            description="anyio worker threads in use (sync endpoints, sync dependencies, run_in_threadpool).",
        )
        meter.create_observable_gauge(
            "fastapi_doctor.threadpool.waiting",
            callbacks=[_CALLBACKS["waiting"]],
            unit="{task}",
            description="Tasks waiting for an anyio worker thread.",
        )
        meter.create_observable_gauge(
            "fastapi_doctor.threadpool.limit",
            callbacks=[_CALLBACKS["limit"]],
            unit="{thread}",
            description="anyio's default thread limit (total tokens of its capacity limiter).",
        )
        installs = agent.instrumentation
        installs.add(hub.attach_callbacks, self._on_attach)
        installs.add(hub.tick_callbacks, self._on_tick)
        hub.acquire(self, agent)
        for hb in list(hub.heartbeats.values()):
            hb.pool = hb.pool or _Pool()
        _current = self
        installs.record(self._forget, "threadpool")

    def _forget(self) -> None:
        global _current
        if _current is self:
            _current = None

    def total(self, field: str) -> int | None:
        pools = [hb.pool for hb in list(hub.heartbeats.values()) if hb.pool is not None and hb.limiter is not None]
        if not pools:
            return None
        return sum(getattr(pool, field) for pool in pools)

    # -- on the loop -------------------------------------------------------------------------

    def _on_attach(self, hb: Any) -> None:
        """Runs in a task on the loop (the probe's first call): anyio can name its limiter here."""
        hb.pool = _Pool()
        if "anyio" not in sys.modules:
            return
        import anyio.to_thread

        hb.limiter = anyio.to_thread.current_default_thread_limiter()

    def _on_tick(self, hb: Any, now: float, _lag: float) -> None:
        limiter = hb.limiter
        pool = hb.pool
        if limiter is None or pool is None:
            return
        busy = pool.busy = limiter.borrowed_tokens
        limit = limiter.total_tokens
        pool.limit = int(limit)
        if busy < limit:  # a free thread: nobody waits (the idle path reads two properties)
            pool.waiting = 0
            pool.since = None
            return
        stats = limiter.statistics()
        waiting = pool.waiting = stats.tasks_waiting
        if waiting <= 0:
            pool.since = None
            return
        if pool.since is None:
            pool.since = now
            pool.max_waiting = 0
            pool.reported = False
        if waiting > pool.max_waiting:
            pool.max_waiting = waiting
        if not pool.reported and now - pool.since >= self.wait_s:
            pool.reported = True
            try:
                self._report(hb, stats.borrowers, now - pool.since)
            except Exception as exc:
                containment.report("threadpool finding", exc)

    def _report(self, hb: Any, borrowers: Iterable[Any], saturated_s: float) -> None:
        pool = hb.pool
        holders = set(borrowers)
        routes: Counter[str] = Counter()
        methods: dict[str, str] = {}
        for state in list(active_requests.values()):
            if state.route is not None and (state.inner_task in holders or state.outer_task in holders):
                routes[state.route] += 1
                methods.setdefault(state.route, state.method)
        elsewhere, database, waiting_for_pool = worker_lines(worker_threads(hb.loop))
        lines = elsewhere + database
        (location, call), in_call = lines.most_common(1)[0] if lines else ((None, None), 0)
        self.agent.report(ThreadpoolSaturated(
            limit=pool.limit,
            busy=pool.busy,
            waiting=pool.max_waiting,
            saturated_s=saturated_s,
            holders=tuple((methods[route], route, n) for route, n in routes.most_common()),
            call=call,
            location=location,
            threads_in_call=in_call,
            threads_waiting_for_a_connection=waiting_for_pool,
        ))
