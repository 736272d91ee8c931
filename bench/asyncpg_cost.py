"""CPU cost of the asyncpg signal, in microseconds of the event loop thread's CPU: per statement on an acquired
connection (``con.fetchval``), and per acquire + statement + release (``pool.fetchval``).

Each configuration runs in its own process against a throwaway PostgreSQL (tests/pg.py), inside a
request context (N+1 counting on), best of five rounds, configurations interleaved (the loop thread's
CPU: the agent's background threads are not the request path's cost):

* ``bare``: no agent;
* ``agent, asyncpg off``: the agent with its other detectors, the asyncpg detector disabled;
* ``agent``: with the asyncpg detector.

End-to-end figures on a busy machine move by more than the agent's share, so the ``agent`` process
also times the signal's own code with the I/O taken out: the statement wrapper around a no-op, and the
bookkeeping of one acquire and its release (the pool's view, the checkout, its line, the histograms).

    .venv/bin/python bench/asyncpg_cost.py             # 3 rounds of 5000 calls
    .venv/bin/python bench/asyncpg_cost.py --rounds 5 --calls 20000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, json, sys, time
mode, n, dsn = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode != "bare":
    import fastapi_doctor
    off = "eventloop,threadpool,gc,process,logs" + (",asyncpg" if mode == "agent, asyncpg off" else "")
    fastapi_doctor.instrument(prometheus_port=0, disabled_detectors=off)
import asyncpg
from fastapi_doctor.context import RequestState, current_request

async def main():
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    state = RequestState("GET", time.perf_counter(), {})
    state.route = "/bench"
    current_request.set(state)
    async def statements():
        async with pool.acquire() as con:
            for _ in range(n):
                await con.fetchval("SELECT 1")
    async def acquires():
        for _ in range(n):
            await pool.fetchval("SELECT 1")
    out = {}
    if mode == "agent":
        import timeit
        from fastapi_doctor import _agent
        (signal,) = [s for s in _agent.get().signals if s.name == "asyncpg"]
        noop = lambda *a, **k: None
        calls = 20 * n
        spent = min(timeit.repeat(lambda: signal._statement(noop, None, ("SELECT 1",), {}), number=calls, repeat=5))
        bare = min(timeit.repeat(lambda: noop("SELECT 1"), number=calls, repeat=5))
        out["signal code: statement wrapper"] = (spent - bare) / calls * 1e6
        con = await pool.acquire()
        tracker, holder = signal.pools, con._holder
        def bookkeeping():
            view = tracker.view_of(pool)
            tracker.acquired(view, holder, 0.0001, view.full())
            tracker.on_checkin(holder)
        out["signal code: acquire + release"] = min(timeit.repeat(bookkeeping, number=n, repeat=5)) / n * 1e6
        await pool.release(con)
        state.data = None
    for name, fn in (("statement", statements), ("acquire + statement + release", acquires)):
        await fn()
        best = float("inf")
        for _ in range(5):
            state.data = None
            t = time.thread_time(); await fn(); best = min(best, time.thread_time() - t)
        out[name] = best / n * 1e6
    print(json.dumps(out))
    await pool.close()

asyncio.run(main())
"""

MODES = ("bare", "agent, asyncpg off", "agent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from pg import PASSWORD, USER, start_cluster

    cluster = start_cluster()
    try:
        dsn = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{cluster.port}/app"
        results: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, mode, str(args.calls), dsn],
                    capture_output=True, text=True, check=True, cwd=ROOT,
                    env={"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"},
                )
                for name, us in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    results[mode].setdefault(name, []).append(us)
    finally:
        cluster.stop()
    print(f"CPU us per call, median of {args.rounds} rounds (each the best of 5), {args.calls} calls a round")
    for name in results["agent"]:
        if name not in results["bare"]:
            print(f"{name:32} {statistics.median(results['agent'][name]):.1f}")
            continue
        bare = statistics.median(results["bare"][name])
        row = ", ".join(f"{m}: {statistics.median(results[m][name]):.1f}" for m in MODES)
        agent = statistics.median(results["agent"][name]) - statistics.median(results["agent, asyncpg off"][name])
        print(f"{name:32} {row}  (asyncpg detector: +{agent:.1f} us; bare {bare:.1f})")


if __name__ == "__main__":
    main()
