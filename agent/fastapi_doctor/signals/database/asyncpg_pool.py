"""Raw asyncpg (detector ``asyncpg``): pools, leaks, exhaustion, pools built per request, N+1 queries.

Installed when the app imports asyncpg (also through ``databases``, which runs on asyncpg). It feeds
the same decision code as the SQLAlchemy database signal, so the findings and the metric names are
the ones dashboards and alerts already know:

* ``Pool._acquire`` and ``PoolConnectionHolder._release`` are wrapped: every acquired connection is a
  :class:`~fastapi_doctor.signals.database.db_pool.Checkout` of a :class:`~fastapi_doctor.signals.database.db_pool.PoolTracker`
  (``db.client.connection.*`` metrics, leaks held too long or left behind by their request, with the
  acquire line). asyncpg waits for a free connection without a time limit by default, so exhaustion is
  decided on facts: at least half of a pool's recent acquires found it full and waited, while the
  pool's event loop was not busy nearly all the time (the rule's ``loop_busy``: then the queue is at
  the loop); an acquire timeout is reported at once. Either names the pool's size and the routes
  holding its connections.
* ``Connection.fetch/fetchrow/fetchval/execute/executemany/fetchmany`` and the prepared statements'
  methods are wrapped: each statement the app sends counts in the request's statements by fingerprint
  (:mod:`~fastapi_doctor.signals.database.db_queries`, the ``n_plus_one`` rule). asyncpg's own statements (reset on
  release, transactions) and SQLAlchemy's (counted by the database signal) are left out.
* ``Pool.__init__`` and ``asyncpg.connect`` are wrapped: a pool (``asyncpg.create_pool``, a
  ``databases.Database(...).connect()``) or a connection opened inside requests again and again from
  one line is a ``dependency_rebuild`` at that line.

Wrappers are wrapt's; each is undone by ``uninstrument()``. Nothing here imports asyncpg before the app.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import types
import urllib.parse
import weakref
from time import perf_counter
from typing import Any

from opentelemetry import metrics

from fastapi_doctor import containment
from fastapi_doctor.context import current_request
from fastapi_doctor.kernel.instrumentation_context import Instrumentation
from fastapi_doctor.kernel.loop import Heartbeat, running_heartbeat
from fastapi_doctor.observations import AcquiresWaited
from fastapi_doctor.kernel.rebuilds import RebuildSites
from fastapi_doctor.kernel.windows import Window
from fastapi_doctor.signals.database.db_pool import (
    Checkout,
    PoolStats,
    PoolTracker,
    occupancy,
)
from fastapi_doctor.signals.database.db_queries import QueryCounter
from fastapi_doctor.version import __version__

# An acquire that found every connection in use and waited at least this long counts towards
# exhaustion; shorter waits are the loop's own scheduling, not a pool too small for its load.
EXHAUSTED_WAIT_S = 0.005
# The loop's busy clock is kept at this many of the latest heartbeat ticks that saw acquires (about a
# second at the default 50 ms): the loop's busy share is measured from the oldest, or from the first
# acquire that waited after a window without waits, whichever is later.
LOOP_MARKS = 20

# Packages whose frames stand between the app and a statement without having sent it: the pool's
# proxies and shortcuts (``pool.fetch``), wrappers (contrib's asyncpg instrumentor, wrapt).
_PASS_THROUGH = ("asyncpg.pool", "opentelemetry", "wrapt")
# Statements sent by these are not the app's: asyncpg's own (reset on release, transactions,
# introspection) and SQLAlchemy's, which the database signal counts through its dialect events.
_NOT_THE_APP = ("asyncpg", "sqlalchemy")

_STATEMENT_METHODS = {
    "Connection": ("execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany"),
    "PreparedStatement": ("executemany", "fetch", "fetchrow", "fetchval", "fetchmany"),
}

# The attribute of an asyncpg < 0.30 pool's queue that leads back to the pool (see PoolView).
_QUEUE_BACK = "_fastapi_doctor_pool"

_PASS, _APP, _OTHER = 0, 1, 2
_senders: dict[str, int] = {}  # module name -> _PASS/_APP/_OTHER (a dict lookup per frame per statement)


def in_packages(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _module_of(frame: types.FrameType) -> str:
    name = frame.f_globals.get("__name__")
    return name if isinstance(name, str) else ""


def _sender_kind(module: str) -> int:
    kind = _senders.get(module)
    if kind is None:
        kind = _PASS if in_packages(module, _PASS_THROUGH) else _OTHER if in_packages(module, _NOT_THE_APP) else _APP
        if len(_senders) < 4096:
            _senders[module] = kind
    return kind


def sent_by_the_app(frame: types.FrameType | None) -> bool:
    """Whether the statement whose wrapper was called from ``frame`` comes from the app."""
    depth = 0
    while frame is not None and depth < 8:
        kind = _sender_kind(_module_of(frame))
        if kind != _PASS:
            return kind == _APP
        frame = frame.f_back
        depth += 1
    return True


def inside(frame: types.FrameType | None, packages: tuple[str, ...], limit: int = 16) -> bool:
    """Whether a frame of one of ``packages`` is among the ``limit`` innermost ones from ``frame``."""
    depth = 0
    while frame is not None and depth < limit:
        if in_packages(_module_of(frame), packages):
            return True
        frame = frame.f_back
        depth += 1
    return False


def pool_name(connect_args: tuple[Any, ...], connect_kwargs: dict[str, Any]) -> str:
    """``postgresql://host:port/database`` from asyncpg's connect arguments: no user, password or query
    (the name SQLAlchemy pools get, so one database has one name whichever client reaches it)."""
    dsn = connect_args[0] if connect_args else connect_kwargs.get("dsn")
    host = connect_kwargs.get("host")
    port = connect_kwargs.get("port")
    database = connect_kwargs.get("database")
    if isinstance(dsn, str) and dsn:
        parts = urllib.parse.urlsplit(dsn)
        netloc = parts.netloc.rpartition("@")[2]  # drop user:password
        if host is None and netloc:
            host, _, dsn_port = netloc.partition(":") if netloc.count(":") == 1 else (netloc, "", "")
            port = port or dsn_port or None
        database = database or parts.path.lstrip("/") or None
    if isinstance(host, (list, tuple)):
        host = ",".join(str(h) for h in host)
    if isinstance(port, (list, tuple)):
        port = ",".join(str(p) for p in port)
    host = str(host) if host else ""
    if host and port and ":" not in host:
        host = f"{host}:{port}"
    return f"postgresql://{host}/{database or ''}"


class PoolView:
    """An asyncpg pool as the pool tracker reads a SQLAlchemy queue pool: connections in use and idle,
    its size (``max_size``, no overflow). ``window`` holds its recent acquires; ``loop_marks`` the busy
    clock of the pool's event loop (``heartbeat``, found at the first acquire on a watched loop) at the
    latest ticks that saw acquires, since the current stretch of waiting acquires began.

    asyncpg's ``Pool`` takes no weak reference, so the view holds weakly something that lives exactly as
    long as the pool and leads back to it: one of its connection holders (made once when the pool
    starts, each pointing back to it). Before asyncpg 0.30 the holders take no weak reference either:
    then the pool's queue of free holders (also made once at start), given a reference back to the pool
    (a cycle, collected with the pool). A pool dropped without ``close()`` is not kept alive by the agent.
    """

    __slots__ = ("_anchor", "_back", "stats", "window", "heartbeat", "loop_marks", "stretch_tick", "__weakref__")
    _max_overflow = 0

    def __init__(self, pool: Any, stats: PoolStats) -> None:
        try:
            self._anchor, self._back = weakref.ref(pool._holders[0]), "_pool"
        except TypeError:  # asyncpg < 0.30
            queue = pool._queue
            self._anchor, self._back = weakref.ref(queue), _QUEUE_BACK
            setattr(queue, _QUEUE_BACK, pool)
        self.stats = stats
        self.window = Window()
        self.heartbeat: Heartbeat | None = None
        self.loop_marks: collections.deque[tuple[float, float]] = collections.deque(maxlen=LOOP_MARKS)
        self.stretch_tick = -1.0  # the heartbeat tick before the current stretch of waits began

    def pool(self) -> Any:
        anchor = self._anchor()
        return None if anchor is None else getattr(anchor, self._back, None)

    def live(self) -> bool:
        pool = self.pool()
        if pool is None:
            return False
        is_closing = getattr(pool, "is_closing", None)  # asyncpg 0.28+; before it, its two flags
        if is_closing is not None:
            return not is_closing()
        return not (getattr(pool, "_closing", False) or getattr(pool, "_closed", False))

    def loop_clock(self) -> tuple[float, float] | None:
        """The busy clock of the pool's event loop at its last tick (None: not watched); from any thread."""
        heartbeat = self.heartbeat
        return heartbeat.busy_clock() if heartbeat is not None and not heartbeat.stopped else None

    def full(self) -> bool:
        """No free connection: the next acquire waits (asyncpg keeps free holders in ``_queue``)."""
        pool = self.pool()
        queue = getattr(pool, "_queue", None)
        return queue is not None and queue.empty()

    def checkedout(self) -> int:
        pool = self.pool()
        return 0 if pool is None else max(0, pool.get_size() - pool.get_idle_size())

    def checkedin(self) -> int:
        pool = self.pool()
        return 0 if pool is None else int(pool.get_idle_size())

    def size(self) -> int:
        pool = self.pool()
        return 0 if pool is None else int(pool.get_max_size())

    def overflow(self) -> int:
        return 0


class AsyncpgPoolTracker(PoolTracker):
    """The pool tracker of the database signal (metrics, leaks, its watchdog) over asyncpg pools."""

    def __init__(self, agent: Any) -> None:
        # The same instruments (names, units, descriptions) under this signal's own meter: created on the
        # agent's meter they would be the database signal's, and the SDK keeps only its first callbacks.
        # Prometheus merges the two scopes into one family; the histograms are the agent's lean ones.
        scoped = types.SimpleNamespace(
            report=agent.report,
            settings=agent.settings,
            lean=getattr(agent, "lean", None),
            meter=metrics.get_meter("fastapi_doctor.asyncpg", __version__),
        )
        super().__init__(scoped)
        # id(pool) -> its view (which holds the pool weakly); views of pools gone are dropped at collection.
        self._views: dict[int, PoolView] = {}

    def view_of(self, pool: Any) -> PoolView | None:
        """The pool's view; None while the pool has not started (it has no connection holders yet)."""
        view = self._views.get(id(pool))
        if view is not None and view.pool() is pool:
            return view
        return self.add_pool(pool)

    def add_pool(self, pool: Any) -> PoolView | None:
        holders = getattr(pool, "_holders", None)
        if not holders:
            return None
        stats = self.stats_named(pool_name(getattr(pool, "_connect_args", ()), getattr(pool, "_connect_kwargs", {})))
        view = PoolView(pool, stats)
        self._views[id(pool)] = view
        self._bind(view, stats)
        return view

    def live_pools(self) -> list[tuple[Any, PoolStats]]:
        live = []
        for key, view in list(self._views.items()):
            if view.pool() is None:
                self._views.pop(key, None)
            elif view.live():
                live.append((view, view.stats))
        return live

    # -- events ----------------------------------------------------------------------------------

    def acquired(self, view: PoolView, holder: Any, waited: float, found_full: bool) -> None:
        stats = view.stats
        self.wait_time.record(waited, stats.attrs)
        # The holder outlives the connection's proxy: never collected early. Before asyncpg 0.30 it takes
        # no weak reference: its connection does, and the holder keeps it until after the release.
        anchor = holder if type(holder).__weakrefoffset__ else holder._con
        checkout = Checkout.taken(anchor, stats, id(view))
        self.out[id(holder)] = checkout
        flag = found_full and waited >= EXHAUSTED_WAIT_S
        window = view.window
        # The first wait after a window without any begins a new stretch to measure.
        new_stretch = flag and not window.flagged
        due = window.add((waited,), flag)
        mark_loop(view, new_stretch)
        if due:
            self.exhausted(view, checkout)

    # -- findings --------------------------------------------------------------------------------

    def exhausted(self, view: PoolView, waiter: Checkout) -> None:
        """Most recent acquires waited on a full pool: name its size and who holds its connections."""
        window = view.window
        loop = loop_busy(view)
        self.report(AcquiresWaited(
            pool=view.stats.name,
            max_connections=view.size(),
            waits=window.flagged,
            acquires=len(window.items),
            wait_p50_s=window.p50(0),
            location=waiter.location,
            method=waiter.request.method if waiter.request is not None else None,
            route=waiter.route(),
            holders=self.holders(view, excluding=waiter),
            occupancy=occupancy(view),
            loop_busy=loop[0] if loop is not None else None,
            loop_measured_s=loop[1] if loop is not None else 0.0,
            leaked=self.leaked(view),
        ))


def mark_loop(view: PoolView, new_stretch: bool) -> None:
    """Keep the busy clock of the pool's loop at this tick (an asyncpg pool runs on the loop it was made
    on: the running one). A new stretch's marks begin at the next tick: the last one may predate the
    load. On the loop's thread."""
    heartbeat = view.heartbeat
    marks = view.loop_marks
    if heartbeat is None or heartbeat.stopped:
        heartbeat = view.heartbeat = running_heartbeat()
        marks.clear()
        if heartbeat is None:
            return
    busy, at = heartbeat.busy_clock()
    if new_stretch:
        marks.clear()
        view.stretch_tick = at
    elif at > view.stretch_tick and (not marks or marks[-1][1] != at):
        marks.append((busy, at))


def loop_busy(view: PoolView) -> tuple[float, float] | None:
    """The share of wall time the pool's loop thread was on a CPU or waiting for one, and the seconds it
    was measured over: from the oldest mark until now (0 s: the stretch began after the last tick).
    None when unknown (no heartbeat on the pool's loop). On the loop's thread."""
    heartbeat = view.heartbeat
    if heartbeat is None or heartbeat.stopped:
        return None
    if not view.loop_marks:
        return 0.0, 0.0  # the stretch began after the last tick: measured over nothing yet
    busy_then, then = view.loop_marks[0]
    busy_now, now = heartbeat.busy_clock_now()
    if now <= then:
        return None
    return max(0.0, busy_now - busy_then) / (now - then), now - then


class AsyncpgSignal:
    name = "asyncpg"

    def __init__(self) -> None:
        self.agent: Any = None
        self.pools: AsyncpgPoolTracker | None = None
        self.queries: QueryCounter | None = None
        self._rebuilds: RebuildSites | None = None
        self._running = False
        self._installed = False
        self._scan_existing = False

    def instrument(self, agent: Any) -> None:
        self.agent = agent
        self.queries = QueryCounter(agent)
        self._rebuilds = RebuildSites(agent.report)
        installs = agent.instrumentation
        installs.on_request_finished(self.queries.finished)
        self._running = True
        self._scan_existing = "asyncpg" in sys.modules
        installs.when_imported("asyncpg", self._on_asyncpg)

    def uninstrument(self) -> None:
        """Stops the pool watchdog; the wrappers pass every call through from now on (the agent's
        instrumentation context takes them out, or leaves one that was wrapped again on top)."""
        self._running = False
        if self.pools is not None:
            self.pools.stop()
        if self._rebuilds is not None:
            self._rebuilds.clear()
        self._installed = False

    def after_fork(self) -> None:
        if self.pools is not None and self._installed:
            self.pools.after_fork()

    # -- installation ----------------------------------------------------------------------------

    def _on_asyncpg(self, module: types.ModuleType) -> None:
        if not self._running or self._installed:
            return
        try:
            with self.agent.instrumentation.all_or_nothing() as installs:
                self._install(module, installs)
        except Exception as exc:
            containment.report("asyncpg signal", exc)
            self.uninstrument()

    def _install(self, asyncpg: types.ModuleType, installs: Instrumentation) -> None:
        from asyncpg import connection, pool, prepared_stmt

        self._installed = True
        self.pools = AsyncpgPoolTracker(self.agent)
        wrap = installs.wrap

        # Only the methods this asyncpg has (fetchmany came in 0.30; apps on 0.27 are common): one missing
        # took the whole signal down before, pools and statements unwatched.
        for method in _STATEMENT_METHODS["Connection"]:
            if hasattr(connection.Connection, method):
                wrap(connection.Connection, method, self._statement)
        for method in _STATEMENT_METHODS["PreparedStatement"]:
            if hasattr(prepared_stmt.PreparedStatement, method):
                wrap(prepared_stmt.PreparedStatement, method, self._prepared_statement)
        wrap(pool.Pool, "__init__", self._pool_init)
        wrap(pool.Pool, "_acquire", self._acquire)
        wrap(pool.Pool, "_get_new_connection", self._new_connection)
        wrap(pool.PoolConnectionHolder, "_release", self._release)
        wrap(asyncpg, "connect", self._connect)

        if self._scan_existing:
            import gc

            for obj in gc.get_objects():
                if isinstance(obj, pool.Pool):
                    self.pools.add_pool(obj)
        self.pools.start_watchdog()

    # -- statements (per statement: keep it short) -----------------------------------------------

    def _statement(self, wrapped: Any, _instance: Any, args: Any, kwargs: Any) -> Any:
        if self._running and current_request.get() is not None:
            try:
                if sent_by_the_app(sys._getframe(1)):
                    query = args[0] if args else kwargs.get("query", kwargs.get("command"))
                    if isinstance(query, str):
                        self.queries.on_statement(query)  # type: ignore[union-attr]
            except Exception as exc:
                containment.report("asyncpg statements", exc)
        return wrapped(*args, **kwargs)

    def _prepared_statement(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if self._running and current_request.get() is not None:
            try:
                if sent_by_the_app(sys._getframe(1)):
                    self.queries.on_statement(instance.get_query())  # type: ignore[union-attr]
            except Exception as exc:
                containment.report("asyncpg statements", exc)
        return wrapped(*args, **kwargs)

    # -- pools -----------------------------------------------------------------------------------

    async def _acquire(self, wrapped: Any, pool: Any, args: Any, kwargs: Any) -> Any:
        tracker = self.pools
        if not self._running or tracker is None:
            return await wrapped(*args, **kwargs)
        try:
            view = tracker.view_of(pool)
            found_full = view is not None and view.full()
        except Exception as exc:
            containment.report("asyncpg pool", exc)
            view = None
        if view is None:
            return await wrapped(*args, **kwargs)
        pending = view.stats.pending
        pending.append(None)
        start = perf_counter()
        try:
            proxy = await wrapped(*args, **kwargs)
        except (asyncio.TimeoutError, TimeoutError):
            pending.pop()
            tracker.timed_out(view, view.stats, perf_counter() - start)
            raise
        except BaseException:
            pending.pop()
            raise
        pending.pop()
        try:
            tracker.acquired(view, proxy._holder, perf_counter() - start, found_full)
        except Exception as exc:
            containment.report("asyncpg acquire", exc)
        return proxy

    def _release(self, wrapped: Any, holder: Any, args: Any, kwargs: Any) -> Any:
        # Every way back: release, a connection closed or terminated while out, the pool closing.
        tracker = self.pools
        if tracker is not None and self._running:
            try:
                tracker.on_checkin(holder)
            except Exception as exc:
                containment.report("asyncpg release", exc)
        return wrapped(*args, **kwargs)

    async def _new_connection(self, wrapped: Any, pool: Any, args: Any, kwargs: Any) -> Any:
        start = perf_counter()
        connection = await wrapped(*args, **kwargs)
        tracker = self.pools
        if tracker is not None and self._running:
            try:
                view = tracker.view_of(pool)  # the pool's first connections: its view starts here
                if view is not None:
                    tracker.create_time.record(perf_counter() - start, view.stats.attrs)
            except Exception as exc:
                containment.report("asyncpg pool", exc)
        return connection

    def _pool_init(self, wrapped: Any, pool: Any, args: Any, kwargs: Any) -> None:
        wrapped(*args, **kwargs)
        if self._running and self._rebuilds is not None and current_request.get() is not None:
            try:
                frame = sys._getframe(1)
                if inside(frame, ("databases",)):
                    self._rebuilds.created("databases.Database", frame)
                else:
                    self._rebuilds.created("asyncpg.Pool", frame)
            except Exception as exc:
                containment.report("asyncpg pool", exc)

    def _connect(self, wrapped: Any, _instance: Any, args: Any, kwargs: Any) -> Any:
        if self._running and self._rebuilds is not None and current_request.get() is not None:
            try:
                frame = sys._getframe(1)
                # A pool opening its connections (asyncpg's, SQLAlchemy's) is not a connection per request.
                if not inside(frame, ("asyncpg.pool", "sqlalchemy")):
                    self._rebuilds.created("asyncpg.Connection", frame)
            except Exception as exc:
                containment.report("asyncpg connect", exc)
        return wrapped(*args, **kwargs)
