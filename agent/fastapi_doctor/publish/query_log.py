"""The slow-query log: SQLAlchemy statements slower than ``FASTAPI_DOCTOR_SLOW_QUERY_MS``.

Fed by the db signal, which times every statement's driver call for ``db.client.operation.duration``
(:mod:`fastapi_doctor.signals.database.db`): one timing hook for both. With the db detector disabled,
two class-level listeners on ``Engine`` (``before/after_cursor_execute``, added when the app imports
sqlalchemy, removed with the agent's other installs) take the time instead; they cost about 2.4 us per statement
(docs/performance.md), the signal's timing about 1. A slow statement is written with its
fingerprint (literals and parameters replaced by ``?``: never a value), the duration, the database
and pool (URL without user, password or query), the route, the line of the app that ran it and the
trace ids. The ``parameters`` argument is never read.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from opentelemetry.trace import get_current_span

from fastapi_doctor import containment
from fastapi_doctor.context import current_request
from fastapi_doctor.kernel.instrumentation_context import Instrumentation
from fastapi_doctor.kernel.frames import user_location
from fastapi_doctor.sql import fingerprint, pool_name

_T0 = "_fastapi_doctor_t0"


class QueryLog:
    def __init__(self, writer: Any, settings: Any, db_signal: Any = None) -> None:
        self._writer = writer
        self._slow_s = settings.slow_query_ms / 1000.0
        self._db_signal = db_signal
        self._installed = False

    def install(self, instrumentation: Instrumentation) -> None:
        if self._installed:
            return
        self._installed = True
        db_signal = self._db_signal
        if db_signal is not None and db_signal.on_slow_statements(self._slow_s, self.slow):
            instrumentation.record(lambda: db_signal.on_slow_statements(self._slow_s, None), "slow-query log")
            return
        from sqlalchemy.engine import Engine

        # retval=True: SQLAlchemy calls the listener as is, without its argument-passing wrapper.
        instrumentation.listen(Engine, "before_cursor_execute", self.before, retval=True)
        instrumentation.listen(Engine, "after_cursor_execute", self.after)

    def before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> Any:
        try:
            if context is not None:
                setattr(context, _T0, perf_counter())
        except Exception as exc:
            containment.report("slow-query log", exc)
        return statement, parameters

    def after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        try:
            t0 = getattr(context, _T0, None)
            if t0 is None:
                return
            elapsed = perf_counter() - t0
            if elapsed >= self._slow_s:
                self._write(conn.engine, statement, elapsed)
        except Exception as exc:
            containment.report("slow-query log", exc)

    def slow(self, context: Any, statement: str, elapsed: float) -> None:
        """A slow statement the db signal timed (``context``: its SQLAlchemy execution context)."""
        try:
            self._write(context.engine, statement, elapsed)
        except Exception as exc:
            containment.report("slow-query log", exc)

    def _write(self, engine: Any, statement: str, elapsed: float) -> None:
        location = user_location()  # also through an async engine's greenlet
        state = current_request.get()
        ctx = get_current_span().get_span_context()
        sampled = ctx.is_valid and bool(ctx.trace_flags & 1)
        text = fingerprint(statement)
        route = state.route if state is not None else None
        pool = pool_name(engine.url)  # the name of the db signal's pool metrics
        fields = {
            "kind": "query",
            "duration_ms": round(elapsed * 1000.0, 1),
            "db_system": engine.dialect.name,
            "pool": pool,
            "route": route,
            "location": location.as_dict() if location is not None else None,
            "trace_id": "%032x" % ctx.trace_id if sampled else None,
            "span_id": "%016x" % ctx.span_id if sampled else None,
            "statement": text,
        }
        self._writer.write("query", logging.WARNING, (text, pool, route), fields)
