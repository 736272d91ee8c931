"""Idle cost of the event-loop heartbeat and watchdog: CPU of an idle app, in % of one core.

Three servers of the same app run side by side over the same window, so a busy machine disturbs all
three alike: the bare app (no agent), the agent with its loop detectors off (eventloop, threadpool, gc)
and the whole agent. The heartbeat + watchdog cost is the difference of the last two; CPU time is
read from the process (user + system, psutil), not timed.

    .venv/bin/python bench/idle_cost.py              # 60 s window
    .venv/bin/python bench/idle_cost.py --seconds 30 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import AppProcess  # noqa: E402

CONFIGS = {
    "bare": {"wrapper": False, "env": {}},
    "agent, loop detectors off": {
        "wrapper": True,
        "env": {"FASTAPI_DOCTOR_DISABLED_DETECTORS": "eventloop,threadpool,gc"},
    },
    "agent": {"wrapper": True, "env": {}},
}


def cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        times = p.cpu_times()
        total += times.user + times.system
    return total


def one_round(seconds: float) -> dict[str, float]:
    servers = {name: AppProcess("hello:app", wrapper=c["wrapper"], env=c["env"]) for name, c in CONFIGS.items()}
    try:
        for server in servers.values():
            server.start()
            httpx.get(server.url + "/")  # the app's first call starts the heartbeat
        time.sleep(2.0)  # start-up work settles
        procs = {name: psutil.Process(s.proc.pid) for name, s in servers.items()}  # type: ignore[union-attr]
        before = {name: cpu_seconds(p) for name, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        return {name: 100.0 * (cpu_seconds(p) - before[name]) / elapsed for name, p in procs.items()}
    finally:
        for server in servers.values():
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window per round")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rounds = [one_round(args.seconds) for _ in range(args.rounds)]
    result = {name: statistics.median(r[name] for r in rounds) for name in CONFIGS}
    result["heartbeat + watchdog"] = result["agent"] - result["agent, loop detectors off"]
    for name, value in result.items():
        print(f"{name:28s} {value:6.3f} % of one core")
    print(json.dumps({"seconds": args.seconds, "rounds": rounds, "median": result}))


if __name__ == "__main__":
    main()
