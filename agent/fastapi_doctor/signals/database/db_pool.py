"""SQLAlchemy connection pools: ``db.client.connection.*`` metrics and leak detection (``pool_leak``).

Fed by :mod:`fastapi_doctor.signals.database.db`, which owns the SQLAlchemy listeners and patches. Every
checkout remembers when it happened, the request that made it and the user's line (a cheap frame
walk, across SQLAlchemy's greenlet for async engines). A watchdog thread (a handle, monotonic time)
reports a checkout as a leak when it is held longer than ``FASTAPI_DOCTOR_LEAK_SECONDS``, is still
out after its request finished, or was returned by the garbage collector instead of a checkin. A
checkout timeout (pool exhausted) names the routes holding the connections. A pool whose every
connection is in use while callers wait, on every watchdog round for ``FASTAPI_DOCTOR_POOL_WAIT_SECONDS``,
is too small for the load: one finding per episode, naming the pool's size and overflow, the demand and the
holders; when the threads holding the connections are blocked in one line of the app outside the
database (a slow upstream call with a session open), that line is the cause (``blocking_io``).

Nothing here imports SQLAlchemy. Code that may run inside a garbage-collector callback (checkin,
detach) takes no lock and records nothing: it queues the event for the watchdog.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from collections.abc import Iterable
from time import perf_counter
from typing import Any

from fastapi_doctor import containment
from fastapi_doctor.context import RequestState, current_request, pool_waiters
from fastapi_doctor.findings import Location
from fastapi_doctor.observations import CheckoutHeld, CheckoutTimedOut, HeldAcrossCall, Holder, PoolSaturated
from fastapi_doctor.run_delay import process_cpu_demand
from fastapi_doctor.sql import pool_name
from fastapi_doctor.kernel.frames import user_location
from fastapi_doctor.kernel.routes_by_line import RoutesByLine
from fastapi_doctor.kernel.workers import Lines, blocked_elsewhere, worker_lines, worker_threads
from fastapi_doctor.kernel.metrics import histogram

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_USE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


# -- where the user's code is ---------------------------------------------------------------------


# -- bookkeeping ----------------------------------------------------------------------------------




class PoolStats:
    """What is kept per pool name; attribute sets are built once here."""

    __slots__ = ("name", "attrs", "used_attrs", "idle_attrs", "pending", "saturated_since", "peak_waiting",
                 "reported", "rounds", "seen_elsewhere", "seen_database", "waiting_sum", "cpu_at_start",
                 "loop_at_start")

    def __init__(self, name: str) -> None:
        self.name = name
        self.attrs = {POOL_NAME: name}
        self.used_attrs = {POOL_NAME: name, STATE: "used"}
        self.idle_attrs = {POOL_NAME: name, STATE: "idle"}
        # One item per caller waiting in Pool.connect (deque append/pop are atomic: no lock).
        self.pending: collections.deque[None] = collections.deque()
        # Saturation seen by the watchdog: since when (perf_counter) every round found all connections in
        # use and callers waiting, the most callers waiting in a round since then, and whether this
        # episode was reported.
        self.saturated_since: float | None = None
        self.peak_waiting = 0
        self.reported = False
        # Where the worker threads not waiting for a connection were, over the episode's rounds: a
        # thread moves between hops (dependency, endpoint), so one look can miss where they block.
        self.rounds = 0
        self.seen_elsewhere: Lines = collections.Counter()
        self.seen_database: Lines = collections.Counter()
        # Callers waiting, summed over the rounds; the process's CPU time and wait for a CPU when the
        # stretch being judged began (run_delay.process_cpu_demand), and the busy clock of the event
        # loop the pool serves, for a pool that serves one (an asyncpg pool's ``loop_clock``).
        self.waiting_sum = 0
        self.cpu_at_start: tuple[float, float] | None = None
        self.loop_at_start: tuple[float, float] | None = None

    def begin(self, now: float, pool: Any) -> None:
        """A stretch of saturation of ``pool`` to judge begins now."""
        self.saturated_since = now
        self.peak_waiting = self.rounds = self.waiting_sum = 0
        self.seen_elsewhere.clear()
        self.seen_database.clear()
        self.cpu_at_start = process_cpu_demand()
        self.loop_at_start = _loop_clock(pool)


class Checkout(weakref.ref):  # type: ignore[type-arg]
    """A checked-out connection: a weak reference to SQLAlchemy's connection proxy (the "fairy").

    The proxy is dead at checkin only when the garbage collector returned the connection.
    """

    __slots__ = ("stats", "pool_id", "start", "request", "location", "reported", "owner")

    stats: PoolStats
    pool_id: int
    start: float
    request: RequestState | None
    location: Location | None
    reported: bool
    owner: weakref.ref[Any] | None  # the ORM session whose transaction holds it, when one does

    @classmethod
    def taken(cls, connection: Any, stats: PoolStats, pool_id: int) -> Checkout:
        """A connection taken now, in the current request (if any), at the caller's user line."""
        checkout = cls(connection)
        checkout.stats = stats
        checkout.pool_id = pool_id
        checkout.request = current_request.get()
        checkout.location = user_location()
        checkout.reported = False
        checkout.owner = None
        checkout.start = perf_counter()
        return checkout

    def route(self) -> str | None:
        return self.request.route if self.request is not None else None


class PoolTracker:
    def __init__(self, agent: Any) -> None:
        self.report = agent.report
        self.leak_seconds = float(agent.settings.leak_seconds)
        self.pool_wait_s = float(getattr(agent.settings, "pool_wait_seconds", 2.0))
        self.cpus = _cpus()
        # Time a connection may stay out after its request finished before it counts as left behind.
        self.grace = min(1.0, self.leak_seconds / 2)
        self._check_lock = threading.Lock()
        self.active = True
        meter = agent.meter
        self.wait_time = histogram(
            agent,
            "db.client.connection.wait_time",
            unit="s",
            description="Time it took to obtain an open connection from the pool.",
            boundaries=_TIME_BUCKETS,
        )
        self.create_time = histogram(
            agent,
            "db.client.connection.create_time",
            unit="s",
            description="Time it took to create a new connection.",
            boundaries=_TIME_BUCKETS,
        )
        self.use_time = histogram(
            agent,
            "db.client.connection.use_time",
            unit="s",
            description="Time between borrowing a connection and returning it to the pool.",
            boundaries=_USE_BUCKETS,
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="Checkouts that timed out waiting for a connection (pool exhausted).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._observe_count],
            unit="{connection}",
            description="Connections of the pool, by state (idle/used).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._observe_max],
            unit="{connection}",
            description="Most open connections the pool allows (size + max overflow).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max",
            callbacks=[self._observe_idle_max],
            unit="{connection}",
            description="Most idle connections the pool keeps (its size).",
        )
        meter.create_observable_gauge(
            "fastapi_doctor.db.pool.overflow",
            callbacks=[self._observe_overflow],
            unit="{connection}",
            description="Connections open beyond the pool size (overflow in use).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[self._observe_pending],
            unit="{request}",
            description="Callers waiting for a connection from the pool.",
        )
        # Engines by id -> weak reference; pools by id -> (weak reference, stats). Plain dicts: a
        # list() of their values is atomic, so the collection thread never sees them change size.
        self._engines: dict[int, weakref.ref[Any]] = {}
        self._pools: dict[int, tuple[weakref.ref[Any], PoolStats]] = {}
        self._stats: dict[str, PoolStats] = {}
        # Checked-out connections by id(connection record).
        self.out: dict[int, Checkout] = {}
        # Sessions whose leak was reported, by id (weak: a session gone frees its id).
        self.leaking_sessions: dict[int, weakref.ref[Any]] = {}
        self.leak_routes = RoutesByLine()  # by checkout line: the routes whose connections leaked there
        # Events from places that must not take locks (garbage-collector callbacks), for the watchdog.
        # Bounded: a watchdog that stopped cannot make it grow without end.
        self.deferred: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=65536)
        self._watchdog: _Watchdog | None = None

    # -- engines and pools ----------------------------------------------------------------------

    def stats_named(self, name: str) -> PoolStats:
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats.setdefault(name, PoolStats(name))
        return stats

    def add_engine(self, engine: Any) -> PoolStats:
        key = id(engine)
        engines = self._engines
        engines[key] = weakref.ref(engine, lambda _ref: engines.pop(key, None))
        stats = self.stats_named(pool_name(engine.url))
        self._bind(engine.pool, stats)
        return stats

    def _bind(self, pool: Any, stats: PoolStats) -> None:
        key = id(pool)
        pools = self._pools
        pools[key] = (weakref.ref(pool, lambda _ref: pools.pop(key, None)), stats)

    def stats_for(self, pool: Any) -> PoolStats:
        entry = self._pools.get(id(pool))
        if entry is not None and entry[0]() is pool:
            return entry[1]
        # A pool recreated by engine.dispose(), or one this agent has not seen yet.
        for ref in list(self._engines.values()):
            engine = ref()
            if engine is not None and engine.pool is pool:
                stats = self.stats_named(pool_name(engine.url))
                break
        else:
            stats = self.stats_named("unknown")
        self._bind(pool, stats)
        return stats

    def live_pools(self) -> list[tuple[Any, PoolStats]]:
        seen: set[int] = set()
        pools = []
        for ref in list(self._engines.values()):
            engine = ref()
            if engine is None:
                continue
            pool = engine.pool
            if id(pool) in seen:
                continue
            seen.add(id(pool))
            pools.append((pool, self.stats_for(pool)))
        return pools

    # -- events (called by the db signal's listeners) ------------------------------------------

    def on_connect(self, connection_record: Any) -> None:
        """A new DBAPI connection: ``starttime`` is set by SQLAlchemy just before the creator runs."""
        started = getattr(connection_record, "starttime", None)
        if started is None:
            return
        elapsed = time.time() - started
        pool = getattr(connection_record, "_ConnectionRecord__pool", None)
        if elapsed >= 0 and pool is not None:
            self.create_time.record(elapsed, self.stats_for(pool).attrs)

    def on_checkout(self, connection_record: Any, proxy: Any) -> None:
        held = self.out.get(id(connection_record))
        if held is not None and held() is proxy:
            # The same connection handed out again before its checkin (SingletonThreadPool, a session
            # reused): one holding, one leak, kept where it began.
            return
        pool = proxy._pool
        self.out[id(connection_record)] = Checkout.taken(proxy, self.stats_for(pool), id(pool))

    def on_session_begin(self, session: Any, connection: Any) -> None:
        """An ORM session began a transaction on ``connection``: its checkout belongs to that session."""
        proxy = getattr(connection, "_dbapi_connection", None)
        checkout = self.out.get(id(getattr(proxy, "_connection_record", None)))
        if checkout is not None and checkout() is proxy and checkout.owner is None:
            checkout.owner = weakref.ref(session)

    def on_checkin(self, connection_record: Any) -> None:
        """Checkin or detach. May run inside a garbage-collector callback: then no lock, no recording."""
        checkout = self.out.pop(id(connection_record), None)
        if checkout is None:
            return
        now = perf_counter()
        if checkout() is None:
            # The proxy was garbage collected before anyone closed it: the watchdog reports it.
            self.deferred.append(("gc", checkout, now))
        else:
            self.use_time.record(now - checkout.start, checkout.stats.attrs)

    def wrap_connect(self, original: Any, timeout_error: type[BaseException]) -> Any:
        """``Pool.connect`` measured: callers waiting, time to get a connection, timeouts."""
        tracker = self

        def connect(pool: Any) -> Any:
            try:
                stats = tracker.stats_for(pool)
            except Exception as exc:
                containment.report("db pool", exc)
                return original(pool)
            pending = stats.pending
            start = perf_counter()
            pending.append(None)
            thread = threading.get_ident()
            pool_waiters[thread] = pool_waiters.get(thread, 0) + 1
            try:
                proxy = original(pool)
            except timeout_error:
                waited = perf_counter() - start
                pending.pop()
                _done_waiting(thread)
                tracker.timed_out(pool, stats, waited)
                raise
            except BaseException:
                pending.pop()
                _done_waiting(thread)
                raise
            pending.pop()
            _done_waiting(thread)
            try:
                tracker.wait_time.record(perf_counter() - start, stats.attrs)
            except Exception as exc:
                containment.report("db pool", exc)
            return proxy

        connect.__wrapped__ = original  # type: ignore[attr-defined]
        connect.__name__ = getattr(original, "__name__", "connect")
        connect.__qualname__ = getattr(original, "__qualname__", "connect")
        connect.__doc__ = getattr(original, "__doc__", None)
        return connect

    # -- findings ------------------------------------------------------------------------------

    def timed_out(self, pool: Any, stats: PoolStats, waited: float) -> None:
        try:
            self.timeouts.add(1, stats.attrs)
            state = current_request.get()
            self.report(CheckoutTimedOut(
                pool=stats.name,
                waited_s=waited,
                location=user_location(),
                method=state.method if state is not None else None,
                route=state.route if state is not None else None,
                holders=self.holders(pool),
                occupancy=occupancy(pool),
            ))
        except Exception as exc:
            containment.report("db pool timeout", exc)

    def holders(self, pool: Any, excluding: Checkout | None = None) -> tuple[Holder, ...]:
        """Connections of ``pool`` checked out now, by route and checkout line, most (then oldest) first."""
        now = perf_counter()
        holders: dict[tuple[str | None, Location | None], list[float]] = {}
        for checkout in list(self.out.values()):
            if checkout.pool_id == id(pool) and checkout is not excluding:
                entry = holders.setdefault((checkout.route(), checkout.location), [0, 0.0])
                entry[0] += 1
                entry[1] = max(entry[1], now - checkout.start)
        ranked = sorted(holders.items(), key=lambda item: (-item[1][0], -item[1][1]))
        return tuple(Holder(route, location, int(n), age) for (route, location), (n, age) in ranked)

    def leaked(self, pool: Any) -> int:
        """Connections of ``pool`` held by checkouts already reported as leaks."""
        return sum(1 for checkout in list(self.out.values()) if checkout.pool_id == id(pool) and checkout.reported)

    def check_saturation(self, now: float) -> None:
        """A pool asked for more connections than it allows (all in use, callers waiting) on every round for
        ``pool_wait_s``: one finding per episode."""
        for pool, stats in self.live_pools():
            limit = _limit(pool)
            # More callers want a connection than the pool allows (a round may fall between a checkin
            # and the waiter taking that connection: the callers still waiting count).
            if limit is None or not stats.pending or pool.checkedout() + len(stats.pending) <= limit:
                stats.saturated_since = None
                continue
            if stats.saturated_since is None:
                stats.reported = False
                stats.begin(now, pool)
            waiting = len(stats.pending)
            stats.peak_waiting = max(stats.peak_waiting, waiting)
            if stats.reported:
                continue
            elsewhere, database, _waiting = worker_lines(worker_threads())
            stats.seen_elsewhere.update(elsewhere)
            stats.seen_database.update(database)
            stats.rounds += 1
            stats.waiting_sum += waiting
            if now - stats.saturated_since < self.pool_wait_s:
                continue
            try:
                stats.reported = self.report_saturated(pool, stats, now - stats.saturated_since)
            except Exception as exc:
                stats.reported = True
                containment.report("db pool saturation", exc)
            if not stats.reported:
                stats.begin(now, pool)  # not the pool's fault in this stretch: judge the next one afresh

    def report_saturated(self, pool: Any, stats: PoolStats, saturated_s: float) -> bool:
        """Report what a saturated stretch shows; False when it shows no finding."""
        _elsewhere, _database, threads_waiting = worker_lines(worker_threads())
        saturated = PoolSaturated(
            pool=stats.name,
            pool_size=pool.size(),
            max_overflow=int(getattr(pool, "_max_overflow", 0)),
            max_connections=_limit(pool) or 0,
            checked_out=pool.checkedout(),
            waiting=stats.peak_waiting,
            saturated_s=saturated_s,
            threads_waiting=threads_waiting,
            holders=self.holders(pool),
            mean_waiting=stats.waiting_sum / stats.rounds if stats.rounds else None,
            cpu_busy=_cpu_busy(stats.cpu_at_start, saturated_s),
            cpus=self.cpus,
            loop_busy=_loop_busy(stats.loop_at_start, _loop_clock(pool)),
            leaked=self.leaked(pool),
        )
        blocked = blocked_elsewhere(stats.seen_elsewhere, stats.seen_database)
        if blocked is not None:
            # The connections are held across a slow call outside the database: that call is the cause.
            where, call, seen = blocked
            self.report(HeldAcrossCall(
                call=call,
                location=where,
                threads_in_call=max(1, round(seen / max(1, stats.rounds))),  # on average over the rounds
                saturated=saturated,
            ))
            return True
        return self.report(saturated)

    def report_leak(self, checkout: Checkout, reason: str, age: float, pool: Any = None) -> None:
        checkout.reported = True
        owner = checkout.owner() if checkout.owner is not None else None
        if owner is not None:
            # One session never closed takes a connection at each line that finds none held (after a
            # commit returned the last): one leak, one finding, where it was first seen.
            key = id(owner)
            seen = self.leaking_sessions.get(key)
            if seen is not None and seen() is owner:
                return
            sessions = self.leaking_sessions
            sessions[key] = weakref.ref(owner, lambda _ref: sessions.pop(key, None))
        method = checkout.request.method if checkout.request is not None else None
        route = checkout.route()
        routes: tuple[str, ...] = ()
        if checkout.location is not None:
            # One line leaking on several routes (a dependency's) is one leak: one finding at the line.
            method, route, routes = self.leak_routes.add(checkout.location, method, route)
        self.report(CheckoutHeld(
            pool=checkout.stats.name,
            reason=reason,
            age_s=age,
            location=checkout.location,
            method=method,
            route=route,
            occupancy=occupancy(pool) if pool is not None else {},
            routes=routes,
        ))

    def check(self, grace: float | None = None) -> None:
        """One watchdog round: deferred events, then checkouts held too long or past their request.
        ``grace=0`` (the pytest plugin, once a test's requests are over) reports at once what they left."""
        with self._check_lock:  # the watchdog and a settling test may both run a round
            self._check(self.grace if grace is None else grace)

    def _check(self, grace: float) -> None:
        deferred = self.deferred
        while deferred:
            item = deferred.popleft()
            kind = item[0]
            if kind == "gc":
                checkout, returned_at = item[1], item[2]
                self.use_time.record(returned_at - checkout.start, checkout.stats.attrs)
                if not checkout.reported:
                    self.report_leak(checkout, "garbage_collected", returned_at - checkout.start,
                                     self._pool_by_id(checkout.pool_id))
            elif kind == "error":
                containment.report(item[1], item[2])
        now = perf_counter()
        self.check_saturation(now)
        for checkout in list(self.out.values()):
            if checkout.reported:
                continue
            age = now - checkout.start
            request = checkout.request
            # Left behind by a finished request is the sharper diagnosis: it wins over the age.
            if request is not None and request.finished and now - (request.start + request.duration) > grace:
                self.report_leak(checkout, "request_finished", age, self._pool_by_id(checkout.pool_id))
            elif age > self.leak_seconds:
                self.report_leak(checkout, "held_too_long", age, self._pool_by_id(checkout.pool_id))

    def _pool_by_id(self, pool_id: int) -> Any:
        entry = self._pools.get(pool_id)
        return entry[0]() if entry is not None else None

    # -- gauges (read on the collection cycle) -------------------------------------------------

    def _per_name(self) -> dict[PoolStats, list[Any]]:
        grouped: dict[PoolStats, list[Any]] = {}
        if self.active:
            for pool, stats in self.live_pools():
                grouped.setdefault(stats, []).append(pool)
        return grouped

    def _observe_count(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        out = []
        tracked: dict[int, int] = {}
        for checkout in list(self.out.values()):
            tracked[checkout.pool_id] = tracked.get(checkout.pool_id, 0) + 1
        for stats, pools in self._per_name().items():
            used = idle = 0
            for pool in pools:
                if hasattr(pool, "checkedout"):
                    used += pool.checkedout()
                    idle += pool.checkedin()
                else:
                    used += tracked.get(id(pool), 0)
            out.append(Observation(used, stats.used_attrs))
            out.append(Observation(idle, stats.idle_attrs))
        return out

    def _observe_max(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        out = []
        for stats, pools in self._per_name().items():
            limits = [_limit(pool) for pool in pools]
            if limits and None not in limits:
                out.append(Observation(sum(limits), stats.attrs))  # type: ignore[arg-type]
        return out

    def _observe_idle_max(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        out = []
        for stats, pools in self._per_name().items():
            sizes = [pool.size() for pool in pools if hasattr(pool, "checkedout")]
            if sizes:
                out.append(Observation(sum(sizes), stats.attrs))
        return out

    def _observe_overflow(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        out = []
        for stats, pools in self._per_name().items():
            queued = [pool for pool in pools if hasattr(pool, "overflow")]
            if queued:
                out.append(Observation(sum(max(0, pool.overflow()) for pool in queued), stats.attrs))
        return out

    def _observe_pending(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(len(stats.pending), stats.attrs) for stats in self._per_name()]

    # -- watchdog ------------------------------------------------------------------------------

    def start_watchdog(self) -> None:
        if self._watchdog is None:
            # Saturation is sampled: a few rounds within FASTAPI_DOCTOR_POOL_WAIT_SECONDS.
            interval = min(1.0, max(0.05, self.leak_seconds / 4), max(0.05, self.pool_wait_s / 8))
            self._watchdog = _Watchdog(self, interval)
            self._watchdog.start()

    def after_fork(self) -> None:
        """A prefork worker: the parent's checkouts and waiters are not this process's; threads do not
        survive fork, so the child starts its own watchdog."""
        self.out.clear()
        self.deferred.clear()
        self.leaking_sessions.clear()
        self.leak_routes.clear()
        for stats in list(self._stats.values()):
            stats.pending.clear()
        if self._watchdog is not None and self.active:
            self._watchdog = None
            self.start_watchdog()

    def stop(self) -> None:
        self.active = False
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        self.out.clear()
        self.deferred.clear()


def _cpus() -> int | None:
    """CPUs the process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or None
    except (AttributeError, OSError):
        return os.cpu_count()


def _cpu_busy(at_start: tuple[float, float] | None, seconds: float) -> float | None:
    """Cores' worth of CPU the process used or waited for since ``at_start``, over ``seconds``."""
    now = process_cpu_demand()
    if at_start is None or now is None or seconds <= 0:
        return None
    # Threads that ended meanwhile take their time with them: never below zero.
    return max(0.0, (now[0] - at_start[0]) + (now[1] - at_start[1])) / seconds


def _loop_clock(pool: Any) -> tuple[float, float] | None:
    """The busy clock of the event loop ``pool`` serves (``Heartbeat.busy_clock``); None for a pool not
    bound to one loop, or one not watched."""
    loop_clock = getattr(pool, "loop_clock", None)
    return loop_clock() if loop_clock is not None else None


def _loop_busy(at_start: tuple[float, float] | None, now: tuple[float, float] | None) -> float | None:
    """The share of wall time the loop was on a CPU or waiting for one between two readings of its clock."""
    if at_start is None or now is None or now[1] <= at_start[1]:
        return None
    return max(0.0, now[0] - at_start[0]) / (now[1] - at_start[1])


def _done_waiting(thread: int) -> None:
    left = pool_waiters.get(thread, 1) - 1
    if left > 0:
        pool_waiters[thread] = left
    else:
        pool_waiters.pop(thread, None)


def _limit(pool: Any) -> int | None:
    """size + max overflow of a queue pool; None when unbounded or not a queue pool."""
    if not hasattr(pool, "checkedout"):
        return None
    max_overflow = getattr(pool, "_max_overflow", -1)
    if max_overflow < 0:
        return None
    return int(pool.size()) + int(max_overflow)


def occupancy(pool: Any) -> dict[str, Any]:
    """The pool's state for a finding's evidence."""
    if pool is None or not hasattr(pool, "checkedout"):
        return {}
    limit = _limit(pool)
    return {
        "checked_out": pool.checkedout(),
        "idle": pool.checkedin(),
        "pool_size": pool.size(),
        "max_connections": limit,
        "overflow_in_use": max(0, pool.overflow()),
    }


class _Watchdog:
    """A daemon thread running ``tracker.check`` every ``interval`` seconds (monotonic time)."""

    def __init__(self, tracker: PoolTracker, interval: float) -> None:
        self._tracker = tracker
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastapi-doctor-db-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._tracker.check()
            except Exception as exc:
                containment.report("db watchdog", exc)
