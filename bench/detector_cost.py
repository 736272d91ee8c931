"""What each detector costs per request, measured in process (CPU microseconds per request).

    .venv/bin/python bench/detector_cost.py              # about five minutes
    .venv/bin/python bench/detector_cost.py --quick      # checks that it runs, measures little

``bench/app.py`` (the benchmark's app: two middlewares, a hello route and a route with two
dependencies and a SQLite query) is called through raw ASGI by 32 concurrent clients in one child
process per configuration (no server, no sockets: servers on a shared machine move by ±10 % from
run to run, more than a detector costs), the configurations in alternation, best of the rounds:

Each request runs in a task of its own, as uvicorn runs it (the tasks detector sees every task created).

* ``bare``: no agent;
* ``core``: the agent with every detector off and traces off (its middleware, request metrics,
  route, admission);
* ``+<detector>``: that detector alone on top of ``core``;
* ``all detectors``: every detector, traces off;
* ``traced request``: ``core`` with every request traced (ratio 1, no per-second limit): the extra
  cost of one sampled request. At the default (ratio 0.1, at most 2 traces a second) it is paid at
  most twice a second.

A detector's cost is its line minus ``core``. Spans are exported to no collector here (the
exporter is not configured): export costs are in the server benchmark (``bench/run.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import instructions  # bench/ is this script's directory

ROOT = Path(__file__).resolve().parent.parent
DETECTORS = ("eventloop", "threadpool", "gc", "process", "dependencies", "middleware", "responses", "db", "asyncpg", "tasks", "logs")
ROUTES = {"hello": "/hello", "deps_db_mw": "/items/7"}
CLIENTS = 32


def configs() -> dict[str, dict[str, Any] | None]:
    every = ",".join(DETECTORS)
    out: dict[str, dict[str, Any] | None] = {
        "bare": None,
        "core": {"disabled_detectors": every, "traces_sampler_arg": 0.0},
    }
    for name in DETECTORS:
        out[f"+{name}"] = {"disabled_detectors": ",".join(d for d in DETECTORS if d != name), "traces_sampler_arg": 0.0}
    out["all detectors"] = {"traces_sampler_arg": 0.0}
    out["traced request"] = {"disabled_detectors": every, "traces_sampler_arg": 1.0, "traces_per_second": 0}
    return out


async def drive(app: Any, path: str, n: int) -> float:
    """CPU seconds of this process per request, ``n`` requests over CLIENTS concurrent clients."""
    headers = [(b"host", b"bench"), (b"user-agent", b"bench"), (b"accept-encoding", b"gzip")]
    start = time.process_time()
    await instructions.drive(app, path, headers, n, CLIENTS)
    return (time.process_time() - start) / (n // CLIENTS * CLIENTS)


def child(config: str, n: int, rounds: int) -> None:
    settings = configs()[config]
    sys.path.insert(0, str(ROOT / "bench"))
    if settings is not None:
        import fastapi_doctor

        fastapi_doctor.instrument(None, prometheus_port=0, **settings)
    import app as bench_app  # noqa: E402 - the agent must start before the app imports fastapi

    async def run() -> dict[str, float]:
        out = {}
        for route, path in ROUTES.items():
            count = n if route == "hello" else n // 4  # about the same time on each route
            await drive(bench_app.app, path, max(CLIENTS, count // 10))  # warm-up: builds the stack, fills caches
            out[route] = min([await drive(bench_app.app, path, count) for _ in range(rounds)]) * 1e6
        return out

    print(json.dumps({"config": config, "us": asyncio.run(run())}))


def measure(quick: bool = False, rounds: int = 3) -> dict[str, dict[str, float]]:
    """{config: {route: best CPU us/request}} over ``rounds`` alternating passes of child processes."""
    n = 640 if quick else 6400
    inner = 1 if quick else 2
    samples: dict[str, dict[str, list[float]]] = {c: {r: [] for r in ROUTES} for c in configs()}
    for _ in range(1 if quick else rounds):
        for config in configs():
            out = subprocess.run(
                [sys.executable, __file__, "--child", config, "--n", str(n), "--rounds", str(inner)],
                capture_output=True, text=True, check=True, timeout=600,
                env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))},
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            for route, us in result["us"].items():
                samples[config][route].append(us)
    return {c: {r: min(v) for r, v in routes.items()} for c, routes in samples.items()}


def costs(best: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each line against ``core`` (``core`` itself against ``bare``), per route."""
    out: dict[str, dict[str, float]] = {}
    for config, routes in best.items():
        if config == "bare":
            continue
        against = "bare" if config == "core" else "core"
        out[config] = {r: routes[r] - best[against][r] for r in ROUTES}
    return out


def render(best: dict[str, dict[str, float]]) -> str:
    lines = [f"{'in process, CPU us/request':28} {'hello':>8} {'cost':>7}   {'deps_db_mw':>10} {'cost':>7}"]
    extra = costs(best)
    for config, routes in best.items():
        cost = extra.get(config)
        lines.append(
            f"{config:28} {routes['hello']:8.1f} {cost['hello'] if cost else 0.0:+7.1f}   "
            f"{routes['deps_db_mw']:10.1f} {cost['deps_db_mw'] if cost else 0.0:+7.1f}"
        )
    lines.append("(cost: against core; core against bare)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--n", type=int, default=6400)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.rounds)
        return 0
    best = measure(args.quick, args.rounds)
    print(render(best))
    print(json.dumps({"best_us_per_request": best, "cost_us_per_request": costs(best)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
