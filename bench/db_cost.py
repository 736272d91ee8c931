"""CPU cost of the db signal per connection checkout (+ one statement + checkin), in microseconds.

Each configuration runs in its own process, in-process SQLite (so the query itself is as cheap as
it gets and the agent's share shows), inside a request context (N+1 counting on), measured in CPU
time of the process (the watchdog thread included), best of five rounds, configurations interleaved:

* ``bare``: no agent;
* ``agent, db off``: the agent with its other detectors, the db detector disabled;
* ``agent``: with the db detector;
* ``agent, no histograms``: the db detector with its two histogram records (wait, use) made no-ops,
  to show the share of the (lean) histogram records.

With ``--statements``, the cost per statement on one connection held open (no checkout): the N+1 count
and ``db.client.operation.duration`` (the wrapped dialect execute method, one histogram record), and
``agent + slow-query log`` adds the logs detector (its Engine before/after_cursor_execute listeners).

    .venv/bin/python bench/db_cost.py             # 3 rounds of 20000 checkouts
    .venv/bin/python bench/db_cost.py --rounds 5 --checkouts 50000
    .venv/bin/python bench/db_cost.py --statements --rounds 5 --checkouts 50000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, tempfile, time
mode, n, unit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode != "bare":
    import fastapi_doctor
    off = "eventloop,threadpool,gc,process" + ("" if mode == "agent + slow-query log" else ",logs")
    off += ",db" if mode == "agent, db off" else ""
    fastapi_doctor.instrument(prometheus_port=0, disabled_detectors=off)
    if mode == "agent, no histograms":
        from fastapi_doctor import _agent
        class Nop:
            def record(self, *a, **k): pass
        (db,) = [s for s in _agent.get().signals if s.name == "db"]
        db.pools.wait_time = db.pools.use_time = db.durations.duration = Nop()
from sqlalchemy import create_engine
from fastapi_doctor.context import RequestState, current_request
engine = create_engine(f"sqlite:///{tempfile.mktemp(suffix='.db')}", pool_size=2)
state = RequestState("GET", time.perf_counter(), {})
state.route = "/bench"
current_request.set(state)
def checkouts():
    for _ in range(n):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
held = engine.connect()
def statements():
    execute = held.exec_driver_sql
    for _ in range(n):
        execute("SELECT 1")
run = statements if unit == "statement" else checkouts
run()
best = float("inf")
for _ in range(5):
    t = time.process_time(); run(); best = min(best, time.process_time() - t)
print(best / n * 1e6)
"""

MODES = ("bare", "agent, db off", "agent", "agent, no histograms")
STATEMENT_MODES = ("bare", "agent, db off", "agent", "agent, no histograms", "agent + slow-query log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkouts", type=int, default=20000)
    parser.add_argument("--statements", action="store_true", help="per statement on a held connection")
    args = parser.parse_args()
    unit = "statement" if args.statements else "checkout"
    modes = STATEMENT_MODES if args.statements else MODES
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode, str(args.checkouts), unit],
                capture_output=True, text=True, check=True, cwd=ROOT,
            )
            results[mode].append(float(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(results["agent, db off"])
    what = "statement" if args.statements else "checkout + statement + checkin"
    for mode in modes:
        value = statistics.median(results[mode])
        extra = f"  (+{value - base:.1f} us)" if mode not in ("bare", "agent, db off") else ""
        print(f"{mode:24s} {value:6.1f} us per {what}{extra}")


if __name__ == "__main__":
    main()
