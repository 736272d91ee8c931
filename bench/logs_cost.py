"""Cost of the logs signal's hot paths, in-process (microbenchmarks; best of several rounds).

    .venv/bin/python bench/logs_cost.py
    .venv/bin/python bench/logs_cost.py --contrib /path/with/opentelemetry-instrumentation-logging

* the request hook on the default path (a fast 200 without finding: nothing written);
* trace ids on a LogRecord (the agent's ``makeRecord`` wrapper) against none, and against contrib's
  ``opentelemetry-instrumentation-logging`` record factory when ``--contrib`` points at it;
* the two SQLAlchemy cursor listeners per statement (SQLite ``SELECT 1``).

On a shared machine the absolute numbers move; compare lines of one run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

ROUNDS = 7


def best_ns(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def agent() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider

    from fastapi_doctor import _agent, config
    from fastapi_doctor.lean_metrics import LeanMetrics
    from fastapi_doctor.middleware import RequestMetrics
    from fastapi_doctor.publish.logs import LogsSignal

    settings, _ = config.load(environ={})
    a = _agent.Agent(settings)
    a.meter = MeterProvider().get_meter("bench")
    a.request_metrics = RequestMetrics(LeanMetrics("bench", "0"))
    a.running = True
    signal = LogsSignal()
    signal.instrument(a)
    return a, signal


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contrib", help="a directory holding opentelemetry-instrumentation-logging")
    args = parser.parse_args()
    from opentelemetry.sdk.trace import TracerProvider

    from fastapi_doctor.context import RequestState

    tracer = TracerProvider().get_tracer("bench")
    logger = logging.getLogger("bench")
    make = lambda: logger.makeRecord("bench", logging.INFO, __file__, 1, "m", None, None)  # noqa: E731
    rows: list[tuple[str, float]] = []

    rows.append(("LogRecord, no trace ids", best_ns(make, 100_000)))

    a, signal = agent()
    state = RequestState("GET", 0.0, None)
    state.route, state.status, state.duration = "/items/{item_id}", 200, 0.002
    hook = signal.request_log.finished
    noop = lambda s: None  # noqa: E731
    rows.append(("request hook, fast 200 (default path)", best_ns(lambda: hook(state), 1_000_000)))
    rows.append(("  an empty hook, for reference", best_ns(lambda: noop(state), 1_000_000)))
    rows.append(("LogRecord + agent trace ids, no span", best_ns(make, 100_000)))
    with tracer.start_as_current_span("s"):
        rows.append(("LogRecord + agent trace ids, sampled span", best_ns(make, 100_000)))

    from sqlalchemy import create_engine, text

    engine = create_engine("sqlite://")
    stmt = text("SELECT 1")
    with engine.connect() as conn:
        run = lambda: conn.execute(stmt).scalar()  # noqa: E731
        with_listeners = best_ns(run, 20_000)
        a.instrumentation.undo()  # the slow-query listeners go (with the rest)
        without = best_ns(run, 20_000)
    rows.append(("SQLite SELECT 1, no listeners", without))
    rows.append(("SQLite SELECT 1, slow-query listeners", with_listeners))
    signal.uninstrument()

    if args.contrib:
        sys.path.insert(0, args.contrib)
        from opentelemetry.instrumentation.logging import LoggingInstrumentor

        LoggingInstrumentor().instrument(inject_trace_context=True, enable_log_auto_instrumentation=False)
        rows.append(("LogRecord + contrib logging factory, no span", best_ns(make, 100_000)))
        with tracer.start_as_current_span("s"):
            rows.append(("LogRecord + contrib logging factory, sampled span", best_ns(make, 100_000)))
        LoggingInstrumentor().uninstrument()

    width = max(len(name) for name, _ in rows)
    for name, ns in rows:
        print(f"{name:<{width}}  {ns / 1000:8.3f} us")


if __name__ == "__main__":
    main()
