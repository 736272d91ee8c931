"""Instructions per request, counted by valgrind's callgrind: repeatable on a shared, noisy machine
where req/s and CPU time move by ±10 % between runs.

    .venv/bin/python bench/instructions.py            # every line below (about 15 minutes)
    .venv/bin/python bench/instructions.py --quick    # fewer requests, a 100-route large app
    .venv/bin/python bench/instructions.py --only bare,default --apps small
    .venv/bin/python bench/instructions.py --opcodes default --app small   # by function, no valgrind

One child process per (configuration, app) under ``valgrind --tool=callgrind``; it drives the app
in process through raw ASGI (no server, no sockets), ``CLIENTS`` concurrent clients, each request in
a task of its own as uvicorn runs it. Counting is on only while the measured requests run: in the
event loop's thread and in anyio's worker threads (sync endpoints and dependencies), not in the
agent's own threads (export, watchdogs), whose work is off the request path, nor in the event loop
heartbeat's ticks (a few a second, whatever the load). A small C helper
(``callgrind.h``'s client requests, compiled once into .cache/) zeroes the counters before each
route's requests and dumps them after; warm-up requests (stack built, caches filled) run first,
then a collection and ``gc.freeze()`` (a full collection's cost is the heap's size, not the request
path's), and the agent's time thresholds are scaled by valgrind's slowdown (``SLOWDOWN``).

Apps: ``small`` is ``bench/app.py`` (hello; deps+db+middleware); ``large-1`` and ``large-1000`` are
``bench/large_app.py`` with 1 and 1,000 routes (8 middlewares, 5 dependencies per route), the same
measured route in both: the agent's cost on it should not grow with the app.

Configurations:

* ``bare``: no agent.
* ``default``: the agent in its default configuration, on the request path almost every request
  takes: every detector on, traces at ratio 0.1 but the per-second trace budget spent, and the
  per-second budget of requests whose middleware layers are timed spent (at thousands of requests
  a second, 2 traced and 50 timed a second are a small fraction; under valgrind a second is about
  a hundred requests, so the budgets are set to ~0 here and their cost is measured apart:)
* ``traced``: every request traced (ratio 1, no limit), no export: the extra of one traced request;
* ``timed``: every request's middleware layers timed;
* ``core``: every detector off, traces off (the agent's middleware, request metrics, route hook,
  admission).

``--opcodes CONFIG`` attributes the work to functions without valgrind (which sees only the
interpreter's C functions): a ``sys.settrace`` opcode tracer counts the Python opcodes each function
runs per request, as deterministic as the instruction count and a fair proxy for it (bare hello:
about 97 instructions per opcode).

Per request at a rate R (req/s) the default configuration costs ``default + 2/R * (traced - default)
+ 50/R * (timed - default)``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "callgrind-helper"
CLIENTS = 4
DETECTORS = ("eventloop", "threadpool", "gc", "process", "dependencies", "middleware", "responses", "db", "asyncpg",
             "tasks", "logs")
_EMPTY = 1e-9  # a per-second budget that is spent after its first token

APPS: dict[str, dict[str, Any]] = {
    "small": {"module": "app", "env": {}, "routes": {"hello": "/hello", "deps_db_mw": "/items/7"}},
    "large-1": {"module": "large_app", "env": {"BENCH_LARGE_ROUTES": "1"}, "routes": {"large_route": "/r0/items/7/0"}},
    "large-1000": {"module": "large_app", "env": {"BENCH_LARGE_ROUTES": "1000"},
                   "routes": {"large_route": "/r0/items/7/0"}},
}


# Under valgrind (and the opcode tracer) the app runs about 50 times slower: the agent's time
# thresholds are scaled by as much, so that it judges the app as it does at native speed (else every
# request is a slow request, the loop looks blocked, and the diagnosis paths run on every request).
SLOWDOWN = 50
THRESHOLDS = {"loop_block_ms": 100.0, "heartbeat_ms": 50.0, "slow_dependency_ms": 25.0, "slow_middleware_ms": 25.0,
              "slow_request_ms": 1000.0, "slow_query_ms": 200.0}


def configs() -> dict[str, dict[str, Any] | None]:
    budgets = {"traces_per_second": _EMPTY, "middleware_timed_per_second": _EMPTY}
    return {
        "bare": None,
        "default": dict(budgets),
        "traced": {"traces_sampler_arg": 1.0, "traces_per_second": 0, "middleware_timed_per_second": _EMPTY},
        "timed": {"traces_per_second": _EMPTY, "middleware_timed_per_second": 0},
        "core": {"disabled_detectors": ",".join(DETECTORS), "traces_sampler_arg": 0.0},
    }


# -- the C helper: callgrind's client requests --------------------------------------------------

_HELPER_C = r"""
#include <valgrind/callgrind.h>
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def helper() -> Path:
    lib = CACHE / "libcghelper.so"
    if not lib.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        src = CACHE / "cghelper.c"
        src.write_text(_HELPER_C)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


# -- the child: runs under valgrind -------------------------------------------------------------

async def drive(app: Any, path: str, headers: list[tuple[bytes, bytes]], n: int, clients: int = CLIENTS) -> None:
    """``n`` requests over ``clients`` concurrent clients, through raw ASGI."""
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return body

    async def send(message: dict[str, Any]) -> None:
        pass

    async def client(count: int) -> None:
        create_task = asyncio.get_running_loop().create_task
        for _ in range(count):
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000), "server": ("bench", 80),
                "state": {},
            }
            await create_task(app(scope, receive, send))  # a task per request, as uvicorn runs it

    await asyncio.gather(*(client(n // clients) for _ in range(clients)))


class _Counter:
    """Where counting is switched: callgrind's client requests, or a Python opcode tracer."""

    def __init__(self, opcodes: bool) -> None:
        self.opcodes: collections.Counter[tuple[str, str]] | None = None
        self._on = threading.local()  # whether this thread counts (as callgrind's, per thread)
        if opcodes:
            self.opcodes = collections.Counter()
        else:
            import ctypes

            self.cg = ctypes.CDLL(str(helper()))

    def toggle(self) -> None:
        """Counting on or off in the calling thread."""
        if self.opcodes is None:
            self.cg.cg_toggle()
            return
        on = self._on.value = not getattr(self._on, "value", False)
        sys.settrace(self._trace if on else None)

    def start_thread(self) -> None:
        self.toggle()  # each thread has its own state, off at its start

    def zero(self) -> None:
        if self.opcodes is None:
            self.cg.cg_zero()
        else:
            self.opcodes.clear()

    def dump(self, name: str) -> None:
        if self.opcodes is None:
            self.cg.cg_dump(name.encode())

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return self._count

    def _count(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode" and self.opcodes is not None:
            code = frame.f_code
            self.opcodes[(code.co_filename, code.co_qualname)] += 1
        return self._count


def child(config: str, app_name: str, n: int, warm: int, opcodes: bool = False) -> None:
    counter = _Counter(opcodes)
    settings = configs()[config]
    spec = APPS[app_name]  # its environment is set by the parent
    sys.path.insert(0, str(ROOT / "bench"))
    if settings is not None:
        import fastapi_doctor

        scaled = {name: default * SLOWDOWN for name, default in THRESHOLDS.items()}
        fastapi_doctor.instrument(None, prometheus_port=0, **scaled, **settings)
        from fastapi_doctor.signals import eventloop

        # The heartbeat's ticks (and what runs on them: the tasks detector's cycle, the threadpool's
        # sampling) come a few times a second, not per request; under valgrind a second is about a
        # hundred requests, so they are not counted.
        tick = eventloop.Heartbeat.tick

        def uncounted_tick(self: Any) -> None:
            counter.toggle()
            try:
                tick(self)
            finally:
                counter.toggle()

        eventloop.Heartbeat.tick = uncounted_tick  # type: ignore[method-assign]
    import random

    random.seed(1)  # the sampling ratio's draws
    import anyio._backends._asyncio as anyio_asyncio

    # Counting is per thread: anyio's worker threads count from their start (sync endpoints and
    # dependencies run there); the counters are zeroed before each measured route anyway.
    run = anyio_asyncio.WorkerThread.run

    def counted_run(self: Any) -> None:
        counter.start_thread()
        run(self)

    anyio_asyncio.WorkerThread.run = counted_run  # type: ignore[method-assign]
    module = __import__(spec["module"])
    headers = [(b"host", b"bench"), (b"user-agent", b"bench"), (b"accept-encoding", b"gzip"),
               *getattr(module, "HEADERS", [])]
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for route, path in spec["routes"].items():
        loop.run_until_complete(drive(module.app, path, headers, warm))
        # A full collection walks the whole heap: its cost is the app's size (and the agent's
        # start-up objects), not the request path's, and whether one falls among the measured
        # requests decided ±6 % of a count. Start-up objects are frozen before counting (as the
        # agent does under its wrapper, decision 9); young collections are still counted.
        gc.collect()
        gc.freeze()
        counter.zero()
        counter.toggle()
        loop.run_until_complete(drive(module.app, path, headers, n))
        counter.toggle()
        counter.dump(f"measured:{route}:{n // CLIENTS * CLIENTS}")
        if counter.opcodes is not None:
            counted = collections.Counter(dict(counter.opcodes))  # worker threads may still count
            print(render_opcodes(config, route, counted, n // CLIENTS * CLIENTS))
    loop.close()


def render_opcodes(config: str, route: str, opcodes: collections.Counter[tuple[str, str]], requests: int) -> str:
    """Python opcodes per request: by package, then the agent's functions."""
    by_package: collections.Counter[str] = collections.Counter()
    for (filename, _), count in opcodes.items():
        if "fastapi_doctor" in filename:
            package = "fastapi_doctor"
        elif "site-packages/" in filename:
            package = filename.split("site-packages/")[-1].split("/")[0]
        else:
            package = os.path.basename(filename)
        by_package[package] += count
    lines = [f"{config} {route}: {sum(opcodes.values()) / requests:,.0f} Python opcodes per request"]
    lines += [f"  {package:34} {count / requests:9.1f}" for package, count in by_package.most_common(8)]
    lines.append("  the agent's functions:")
    for (filename, name), count in opcodes.most_common():
        if "fastapi_doctor" in filename:
            lines.append(f"    {filename.split('fastapi_doctor/')[-1] + ' ' + name:72} {count / requests:7.1f}")
    return "\n".join(lines)


# -- the parent ----------------------------------------------------------------------------------

def count(config: str, app_name: str, n: int, warm: int, app_env: dict[str, str]) -> dict[str, float]:
    """{route: instructions per request} for one child under callgrind."""
    helper()
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
        env.update(app_env)
        env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--callgrind-out-file={out}",
               sys.executable, __file__, "--child", config, "--app", app_name, "--n", str(n), "--warm", str(warm)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{config}/{app_name} failed:\n{proc.stderr[-4000:]}")
        result = {}
        for dump in Path(tmp).iterdir():
            text = dump.read_text(errors="replace")
            trigger = re.search(r"^desc: Trigger: Client Request: measured:(\w+):(\d+)", text, re.M)
            if trigger is None:
                continue
            total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            assert total is not None, dump
            result[trigger.group(1)] = int(total.group(1)) / int(trigger.group(2))
        return result


def app_env(app_name: str, quick: bool) -> dict[str, str]:
    env = dict(APPS[app_name]["env"])
    if quick and app_name == "large-1000":
        env["BENCH_LARGE_ROUTES"] = "100"  # building 1,000 routes under valgrind takes minutes
    return env


def measure(quick: bool = False, only: list[str] | None = None, apps: list[str] | None = None,
            jobs: int = 2) -> dict[str, dict[str, float]]:
    """{config: {route: instructions per request}}; large apps' route keyed by app name."""
    n, warm = (40, 40) if quick else (200, 200)
    wanted = [(c, a) for a in (apps or list(APPS)) for c in (only or list(configs()))
              if not (a.startswith("large") and c in ("traced", "timed"))]
    out: dict[str, dict[str, float]] = {c: {} for c, _ in wanted}
    running: list[tuple[str, str, Any]] = []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for config, app_name in wanted:
            running.append((config, app_name, pool.submit(count, config, app_name, n, warm, app_env(app_name, quick))))
        for config, app_name, future in running:
            for route, per_request in future.result().items():
                key = route if not route.startswith("large") else f"{route}@{app_name}"
                out[config][key] = per_request
                print(f"{config:8} {key:24} {per_request:12,.0f} instructions/request", flush=True)
    return out


def render(counts: dict[str, dict[str, float]]) -> str:
    bare = counts.get("bare", {})
    routes = sorted({r for v in counts.values() for r in v})
    lines = [f"{'instructions/request':22} " + " ".join(f"{r:>26}" for r in routes)]
    for config, by_route in counts.items():
        cells = []
        for r in routes:
            value = by_route.get(r)
            if value is None:
                cells.append(f"{'':>26}")
            elif config != "bare" and r in bare:
                cells.append(f"{value:>14,.0f} ({value - bare[r]:+9,.0f})")
            else:
                cells.append(f"{value:>26,.0f}")
        lines.append(f"{config:22} " + " ".join(cells))
    lines.append("(in brackets: against bare)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated configurations")
    parser.add_argument("--apps", help="comma-separated apps: " + ",".join(APPS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", help="write the counts as JSON here")
    parser.add_argument("--opcodes", metavar="CONFIG", help="no valgrind: Python opcodes per request of CONFIG on "
                        "each route of --app (small by default), by function (attribution)")
    parser.add_argument("--child")
    parser.add_argument("--app")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warm", type=int, default=200)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.app, args.n, args.warm)
        return 0
    if args.opcodes:
        os.environ.update(app_env(args.app or "small", args.quick))
        child(args.opcodes, args.app or "small", args.n, args.warm, opcodes=True)
        return 0
    started = time.monotonic()
    counts = measure(args.quick, args.only.split(",") if args.only else None,
                     args.apps.split(",") if args.apps else None, args.jobs)
    print()
    print(render(counts))
    print(f"({time.monotonic() - started:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
