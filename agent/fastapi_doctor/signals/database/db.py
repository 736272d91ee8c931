"""The database signal (detector ``db``): SQLAlchemy pools, leaks, engines per request, N+1 queries.

Installed when the app imports sqlalchemy, for every engine, sync and async:

* class-level pool events (``connect``, ``checkout``, ``checkin``, ``detach`` on ``Pool``: they apply
  to every pool, existing or future) feed :mod:`~fastapi_doctor.signals.database.db_pool`;
* the dialects' ``do_execute``, ``do_execute_no_params`` and ``do_executemany`` methods (the driver
  call of every statement) are wrapped: each statement counts for
  :mod:`~fastapi_doctor.signals.database.db_queries`, its time in the driver is
  ``db.client.operation.duration`` (:mod:`~fastapi_doctor.signals.database.db_operations`), and one
  sent through a sync dialect on the event loop's thread inside a request is a ``blocking_io`` fact
  at the user's line, however short (:mod:`fastapi_doctor.kernel.blocking_calls`);
* ``Dialect.engine_created`` (the hook ``create_engine`` calls with every engine it made) is wrapped to
  know each engine (its pool and a credential-free name) and to
  report an engine built inside requests by the same line (``dependency_rebuild``, :mod:`fastapi_doctor.kernel.rebuilds`);
* ``Pool.connect`` is wrapped to measure the wait for a connection and count timeouts;
* the ORM ``Session``'s ``after_begin`` event (once the app imports ``sqlalchemy.orm``) ties a checkout
  to the session holding it, so one session never closed is one leak.

Engines created before the agent (``instrument()`` called in code) are found once with the garbage
collector's object list. ``uninstrument()`` removes every listener and restores every patch.
"""

from __future__ import annotations

import functools
import sys
from asyncio import _get_running_loop
from time import perf_counter
from types import ModuleType
from typing import Any

from fastapi_doctor import containment
from fastapi_doctor.context import current_request
from fastapi_doctor.observations import SYNC_STATEMENT_ON_LOOP
from fastapi_doctor.kernel import blocking_calls
from fastapi_doctor.kernel.instrumentation_context import Instrumentation
from fastapi_doctor.signals.database.db_operations import OperationDurations
from fastapi_doctor.signals.database.db_pool import PoolTracker
from fastapi_doctor.signals.database.db_queries import QueryCounter
from fastapi_doctor.kernel.rebuilds import RebuildSites


class DatabaseSignal:
    name = "db"

    def __init__(self) -> None:
        self.agent: Any = None
        self.pools: PoolTracker | None = None
        self.queries: QueryCounter | None = None
        self.durations: OperationDurations | None = None
        self.rebuilds: RebuildSites | None = None
        self._running = False
        self._installed = False
        self._orm_installed = False
        self._scan_existing = False
        # Statements at least this slow are handed to slow_statement(context, statement, seconds): the
        # slow-query log (publish/query_log.py) takes its times from here rather than timing them again.
        self.slow_after = float("inf")
        self.slow_statement: Any = None

    def instrument(self, agent: Any) -> None:
        self.agent = agent
        self.pools = PoolTracker(agent)
        self.queries = QueryCounter(agent)
        self.durations = OperationDurations(agent)
        self.rebuilds = RebuildSites(agent.report)
        installs = agent.instrumentation
        installs.on_request_finished(self.queries.finished)
        self._running = True
        # Engines can exist already only when the app imported sqlalchemy before the agent started.
        self._scan_existing = "sqlalchemy" in sys.modules
        installs.when_imported("sqlalchemy", self._on_sqlalchemy)
        installs.when_imported("sqlalchemy.orm", self._on_orm)

    def on_slow_statements(self, seconds: float, callback: Any) -> bool:
        """Calls ``callback(context, statement, elapsed)`` for each statement of at least ``seconds``
        (``callback=None`` stops); False when this signal does not run (the caller times statements itself)."""
        if not self._running:
            return False
        self.slow_statement = callback
        self.slow_after = seconds if callback is not None else float("inf")
        return True

    def uninstrument(self) -> None:
        """Stops the pool watchdog; statements are no longer counted (the agent's instrumentation
        context takes back the listeners and patches)."""
        self._running = False
        if self.pools is not None:
            self.pools.stop()
        self._installed = self._orm_installed = False

    def settle(self) -> None:
        """Report now the connections that finished requests left checked out (Agent.settle)."""
        if self.pools is not None:
            self.pools.check(grace=0.0)

    def after_fork(self) -> None:
        if self.pools is not None and self._installed:
            self.pools.after_fork()

    # -- installation --------------------------------------------------------------------------

    def _on_sqlalchemy(self, _module: ModuleType) -> None:
        if not self._running or self._installed:
            return
        try:
            with self.agent.instrumentation.all_or_nothing() as installs:
                self._install(installs)
        except Exception as exc:
            containment.report("db signal", exc)
            self.uninstrument()

    def _on_orm(self, module: ModuleType) -> None:
        if not self._running or not self._installed or self._orm_installed:
            return
        try:
            self._orm_installed = True
            self.agent.instrumentation.listen(module.Session, "after_begin", self._after_begin)
        except Exception as exc:
            containment.report("db signal", exc)

    def _install(self, installs: Instrumentation) -> None:
        from sqlalchemy import exc
        from sqlalchemy.engine import Dialect, Engine
        from sqlalchemy.pool import Pool

        pools = self.pools
        assert pools is not None
        self._installed = True
        installs.listen(Pool, "connect", self._on_connect)
        installs.listen(Pool, "checkout", self._on_checkout)
        installs.listen(Pool, "checkin", self._on_checkin)
        installs.listen(Pool, "detach", self._on_detach)

        for cls in _with_own(Pool, "connect"):
            installs.patch(cls, "connect", lambda original: pools.wrap_connect(original, exc.TimeoutError))

        # Not Engine.__init__: create_engine reads the keywords Engine accepts (echo, logging_name…) from
        # its __init__'s own signature, and a wrapper's (*args, **kwargs) made it refuse them.
        # The dialects' execute methods, not Engine's before/after_cursor_execute: an Engine-class listener
        # switches every connection onto SQLAlchemy's event path (about 10 us per statement, measured),
        # and Dialect do_execute events see a statement start, not its end. Dialects imported later that
        # define their own are wrapped when their first engine is made.
        from sqlalchemy.engine.default import DefaultDialect

        self._wrap_executes(DefaultDialect, installs)
        installs.patch(Dialect, "engine_created", self._wrap_engine_created)

        if self._scan_existing:
            import gc

            for obj in gc.get_objects():
                if isinstance(obj, Engine):
                    self.pools.add_engine(obj)
                    self._wrap_executes(type(obj.dialect), installs)
        self.pools.start_watchdog()
        orm = sys.modules.get("sqlalchemy.orm")
        if orm is not None:
            self._on_orm(orm)

    def _wrap_engine_created(self, original: classmethod[Any, Any, Any]) -> classmethod[Any, Any, Any]:
        signal = self
        hook = original.__func__

        def engine_created(cls: Any, engine: Any) -> None:
            hook(cls, engine)
            signal._engine_created(engine, sys._getframe(1))

        engine_created.__wrapped__ = hook  # type: ignore[attr-defined]
        engine_created.__qualname__ = hook.__qualname__
        engine_created.__doc__ = hook.__doc__
        return classmethod(engine_created)

    def _wrap_executes(self, dialect_class: type, installs: Instrumentation) -> None:
        """Wraps the execute methods ``dialect_class`` and its bases define themselves (once each)."""
        for cls in dialect_class.__mro__:
            for name, context_at, many in _EXECUTES:
                original = cls.__dict__.get(name)
                if original is None or getattr(original, "_fastapi_doctor_timed", False):
                    continue
                installs.patch(cls, name, functools.partial(self._timed, name=name, context_at=context_at, many=many))

    def _timed(self, original: Any, name: str, context_at: int, many: bool) -> Any:
        """``original`` (a dialect's execute method) counting the statement and timing the driver call."""
        signal, queries, durations = self, self.queries, self.durations
        assert queries is not None and durations is not None
        record = durations.duration.record

        def execute(dialect: Any, cursor: Any, statement: str, *args: Any, **kwargs: Any) -> Any:
            try:
                # A dialect's own method calling its base's (super()): the outer one counts and times.
                if getattr(type(dialect), name) is not execute:
                    return original(dialect, cursor, statement, *args, **kwargs)
                queries.on_statement(statement)
                if not dialect.is_async and _get_running_loop() is not None:
                    # A sync driver's statement on the event loop's thread (not one of an async engine,
                    # run in SQLAlchemy's greenlet and awaited): it blocks the loop however short it is.
                    blocking_calls.record(signal.agent.report, sys._getframe(1),
                                          f"{type(dialect).__name__}.{name}", SYNC_STATEMENT_ON_LOOP)
                context = args[context_at] if len(args) > context_at else kwargs.get("context")
                attrs = durations.attributes(context, statement, many) if context is not None else None
            except Exception as exc:
                containment.report("db statements", exc)
                attrs = None
            if attrs is None:
                return original(dialect, cursor, statement, *args, **kwargs)
            start = perf_counter()
            try:
                result = original(dialect, cursor, statement, *args, **kwargs)
            except Exception as exc:
                elapsed = perf_counter() - start
                try:
                    record(elapsed, durations.failed(attrs, exc))
                except Exception as inner:
                    containment.report("db statements", inner)
                raise
            try:
                elapsed = perf_counter() - start
                record(elapsed, attrs)
                if elapsed >= signal.slow_after:
                    signal.slow_statement(context, statement, elapsed)
            except Exception as exc:
                containment.report("db statements", exc)
            return result

        execute.__wrapped__ = original  # type: ignore[attr-defined]
        execute.__name__ = original.__name__
        execute.__qualname__ = original.__qualname__
        execute.__doc__ = original.__doc__
        execute._fastapi_doctor_timed = True  # type: ignore[attr-defined]
        return execute

    # -- listeners (all contained: an exception in a pool listener would fail the app's checkout) --

    def _engine_created(self, engine: Any, frame: Any) -> None:
        try:
            assert self.pools is not None and self.rebuilds is not None
            stats = self.pools.add_engine(engine)
            if self._running:
                self._wrap_executes(type(engine.dialect), self.agent.instrumentation)
            if current_request.get() is not None:
                self.rebuilds.created("sqlalchemy.engine.Engine", frame, {"pool": stats.name})
        except Exception as exc:
            containment.report("db engine", exc)

    def _on_connect(self, _dbapi_connection: Any, connection_record: Any) -> None:
        try:
            self.pools.on_connect(connection_record)  # type: ignore[union-attr]
        except Exception as exc:
            containment.report("db connect", exc)

    def _on_checkout(self, _dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
        try:
            self.pools.on_checkout(connection_record, connection_proxy)  # type: ignore[union-attr]
        except Exception as exc:
            containment.report("db checkout", exc)

    def _on_checkin(self, _dbapi_connection: Any, connection_record: Any) -> None:
        # May run in a garbage-collector callback: no lock here, errors go to the watchdog.
        pools = self.pools
        try:
            pools.on_checkin(connection_record)  # type: ignore[union-attr]
        except Exception as exc:
            pools.deferred.append(("error", "db checkin", exc))  # type: ignore[union-attr]

    def _on_detach(self, _dbapi_connection: Any, connection_record: Any) -> None:
        pools = self.pools
        try:
            pools.on_checkin(connection_record)  # type: ignore[union-attr]
        except Exception as exc:
            pools.deferred.append(("error", "db detach", exc))  # type: ignore[union-attr]

    def _after_begin(self, session: Any, _transaction: Any, connection: Any) -> None:
        try:
            self.pools.on_session_begin(session, connection)  # type: ignore[union-attr]
        except Exception as exc:
            containment.report("db session", exc)


# The wrapped execute methods: name, index of ``context`` among the arguments after the statement, batch.
_EXECUTES = (
    ("do_execute", 1, False),
    ("do_execute_no_params", 0, False),
    ("do_executemany", 1, True),
)


def _with_own(base: type, attribute: str) -> list[type]:
    """``base`` and its subclasses that define ``attribute`` themselves."""
    found: list[type] = []
    pending = [base]
    seen: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if attribute in cls.__dict__:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
