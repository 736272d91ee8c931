"""CPU cost of the db signal per connection checkout (+ one statement + checkin), in microseconds.

Each configuration runs in its own process, in-process SQLite (so the query itself is as cheap as
it gets and the agent's share shows), inside a request context (N+1 counting on), measured in CPU
time of the process (the watchdog thread included), best of five rounds, configurations interleaved:

* ``bare``: no agent;
* ``agent, db off``: the agent with its other detectors, the db detector disabled;
* ``agent``: with the db detector;
* ``agent, no histograms``: the db detector with its two histogram records (wait, use) made no-ops,
  to show the share of the (lean) histogram records.

    .venv/bin/python bench/db_cost.py             # 3 rounds of 20000 checkouts
    .venv/bin/python bench/db_cost.py --rounds 5 --checkouts 50000
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
mode, n = sys.argv[1], int(sys.argv[2])
if mode != "bare":
    import fastapi_doctor
    off = "eventloop,threadpool,gc,process,logs" + (",db" if mode == "agent, db off" else "")
    fastapi_doctor.instrument(prometheus_port=0, disabled_detectors=off)
    if mode == "agent, no histograms":
        from fastapi_doctor import _agent
        class Nop:
            def record(self, *a, **k): pass
        (db,) = [s for s in _agent.get().signals if s.name == "db"]
        db.pools.wait_time = db.pools.use_time = Nop()
from sqlalchemy import create_engine
from fastapi_doctor.context import RequestState, current_request
engine = create_engine(f"sqlite:///{tempfile.mktemp(suffix='.db')}", pool_size=2)
state = RequestState("GET", time.perf_counter(), {})
state.route = "/bench"
current_request.set(state)
def run():
    for _ in range(n):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
run()
best = float("inf")
for _ in range(5):
    t = time.process_time(); run(); best = min(best, time.process_time() - t)
print(best / n * 1e6)
"""

MODES = ("bare", "agent, db off", "agent", "agent, no histograms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkouts", type=int, default=20000)
    args = parser.parse_args()
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode, str(args.checkouts)],
                capture_output=True, text=True, check=True, cwd=ROOT,
            )
            results[mode].append(float(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(results["agent, db off"])
    for mode in MODES:
        value = statistics.median(results[mode])
        extra = f"  (db signal: +{value - base:.1f} us)" if mode in ("agent", "agent, no histograms") else ""
        print(f"{mode:22s} {value:6.1f} us per checkout + statement + checkin{extra}")


if __name__ == "__main__":
    main()
