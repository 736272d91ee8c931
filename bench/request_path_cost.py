"""Per-request cost of the request-path signals (dependencies, middleware, responses), in-process.

    .venv/bin/python bench/request_path_cost.py            # about a minute
    .venv/bin/python bench/request_path_cost.py --quick    # checks that it runs, measures little

One FastAPI app (three dependencies: async, async generator, sub-dependency; two middleware of
the user's: a pure ASGI class and GZipMiddleware; a small JSON response) is called through raw ASGI
(no server, no sockets) in a child process per configuration, the configurations in alternation
(A B C … A B C …), best of the rounds, in CPU time of the process per request:

* bare: no agent;
* agent, request-path signals off: every detector disabled (DoctorMiddleware and FastAPI hooks only);
* +dependencies, +middleware, +responses: that detector alone on top of the previous line;
* +all three.

The cost of a signal is its line minus "agent, request-path signals off". On a shared machine the
absolute numbers move; compare lines of one run. ``--parts`` adds microbenchmarks of each part
(best of rounds, CPU time), steadier than the whole-app lines:

* a dependency timer (async function, async generator) against the bare callable;
* the dependencies request hook per dependency built (histogram record and window);
* two middleware layers with their three timers against the bare chain, and the hook;
* the responses request hook per response.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DETECTORS = ("eventloop", "threadpool", "gc", "process", "dependencies", "middleware", "responses", "db", "logs")
MINE = ("dependencies", "middleware", "responses")
CONFIGS: dict[str, tuple[str, ...] | None] = {
    "bare": None,
    "agent, request-path signals off": (),
    "+dependencies": ("dependencies",),
    "+middleware": ("middleware",),
    "+responses": ("responses",),
    "+all three": MINE,
}


def build_app() -> Any:
    from collections.abc import AsyncIterator

    from fastapi import Depends, FastAPI
    from fastapi.middleware.gzip import GZipMiddleware

    class Stamp:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    app = FastAPI()
    app.add_middleware(Stamp)
    app.add_middleware(GZipMiddleware, minimum_size=1000)

    async def settings() -> dict[str, str]:
        return {"region": "eu"}

    async def repository(cfg: dict[str, str] = Depends(settings)) -> str:
        return cfg["region"]

    async def session() -> AsyncIterator[str]:
        yield "session"

    @app.get("/items/{item_id}")
    async def item(item_id: int, repo: str = Depends(repository), s: str = Depends(session)) -> dict[str, Any]:
        return {"id": item_id, "repo": repo, "session": s}

    return app


async def drive(app: Any, n: int) -> float:
    """Mean CPU seconds of this process per request over ``n`` sequential requests through raw ASGI
    (CPU time, not wall time: other processes on a shared machine move it less)."""
    headers = [(b"host", b"bench"), (b"accept-encoding", b"gzip")]
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return body

    async def send(message: dict[str, Any]) -> None:
        pass

    start = time.process_time()
    for _ in range(n):
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": "/items/7", "raw_path": b"/items/7", "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 50000), "server": ("bench", 80),
        }
        await app(scope, receive, send)
    return (time.process_time() - start) / n


def child(config: str, n: int, rounds: int) -> None:
    enabled = CONFIGS[config]
    app = build_app()
    if enabled is not None:
        import fastapi_doctor

        disabled = ",".join(d for d in DETECTORS if d not in enabled)
        fastapi_doctor.instrument(app, prometheus_port=0, traces_sampler_arg=0, disabled_detectors=disabled)

    async def run() -> float:
        await drive(app, max(50, n // 10))  # warm-up: builds the stack, fills the caches
        return min([await drive(app, n) for _ in range(rounds)])

    print(json.dumps({"config": config, "us": asyncio.run(run()) * 1e6}))


def parts() -> list[tuple[str, float]]:
    """(part, CPU microseconds) from in-process microbenchmarks of the signals' pieces."""
    from contextlib import asynccontextmanager

    from fastapi_doctor.context import RequestState, current_request
    from fastapi_doctor.lean_metrics import LeanMetrics
    from fastapi_doctor.signals import dependencies as deps
    from fastapi_doctor.signals import middleware_timing as mw
    from fastapi_doctor.signals import responses as resp

    lean = LeanMetrics("bench", "0")
    n = 20000
    rows: list[tuple[str, float]] = []

    def cpu(fn: Any, rounds: int = 5) -> float:
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            asyncio.run(fn())
            best = min(best, time.process_time() - start)
        return best / n * 1e6

    state = RequestState("GET", 0.0, {"type": "http", "headers": []})
    state.route, state.status, state.duration = "/items/{item_id}", 200, 0.0002

    async def value() -> int:
        return 1

    async def session() -> Any:
        yield 1

    timed_value = deps._AsyncTimed(value, "value", None)
    timed_session = deps._AsyncGenTimed(session, "session", None)

    def calls(fn: Any) -> Any:
        async def run() -> None:
            token = current_request.set(state)
            for _ in range(n):
                state.data = None
                await fn()
            current_request.reset(token)

        return run

    def contexts(fn: Any) -> Any:
        async def run() -> None:
            token = current_request.set(state)
            for _ in range(n):
                state.data = None
                async with asynccontextmanager(fn)():
                    pass
            current_request.reset(token)

        return run

    rows.append(("dependency timer, async function", cpu(calls(timed_value)) - cpu(calls(value))))
    rows.append(("dependency timer, async generator", cpu(contexts(timed_session)) - cpu(contexts(session))))

    signal = deps.DependencySignal()
    signal._histogram = lean.histogram("d", unit="s", description="", boundaries=deps.DURATION_BUCKETS)
    samples = [(timed_value, 0.00001), (timed_session, 0.00002), (deps._AsyncTimed(value, "v2", None), 0.00001)]

    async def dependency_hook() -> None:
        for _ in range(n):
            state.data = {"dependencies": list(samples)}
            signal._finished(state)

    async def setup_only() -> None:
        for _ in range(n):
            state.data = {"dependencies": list(samples)}

    rows.append(("dependencies hook, per dependency built", (cpu(dependency_hook) - cpu(setup_only)) / 3))

    class Layer:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    class Top(Layer):
        pass

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    class Spec:
        def __init__(self, cls: type) -> None:
            self.cls = cls

    class FakeApp:
        user_middleware = [Spec(Layer), Spec(Layer)]

    middleware = mw.MiddlewareSignal()
    middleware._histogram = lean.histogram("m", unit="s", description="", boundaries=deps.DURATION_BUCKETS)
    middleware._active = True
    bare_chain = Top(Layer(Layer(endpoint)))
    timed_chain = middleware._wrap_stack(FakeApp(), Top(Layer(Layer(endpoint))))

    async def nothing(message: Any = None) -> Any:
        return {"type": "http.request", "body": b""}

    def chain(app: Any, hook: bool) -> Any:
        async def run() -> None:
            scope = {"type": "http"}
            for _ in range(n):
                state.data = None
                token = current_request.set(state)
                await app(scope, nothing, nothing)
                current_request.reset(token)
                if hook:
                    middleware._finished(state)

        return run

    bare = cpu(chain(bare_chain, False))
    timed = cpu(chain(timed_chain, False))
    rows.append(("middleware timers, 2 layers (3 timers)", timed - bare))
    rows.append(("middleware hook, 2 layers", cpu(chain(timed_chain, True)) - timed))

    responses = resp.ResponseSignal()
    responses._size = lean.histogram("s", unit="By", description="", boundaries=resp.SIZE_BUCKETS)
    responses._uncompressed = lean.histogram("u", unit="By", description="", boundaries=resp.SIZE_BUCKETS)
    responses._serialize = lean.histogram("z", unit="s", description="", boundaries=deps.DURATION_BUCKETS)
    state.body_bytes = 2

    async def response_hook() -> None:
        for _ in range(n):
            state.data = {"responses.serialize": 0.00001}
            responses._finished(state)

    async def response_setup() -> None:
        for _ in range(n):
            state.data = {"responses.serialize": 0.00001}

    rows.append(("responses hook, per response", cpu(response_hook) - cpu(response_setup)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="alternations of all configurations")
    parser.add_argument("--parts", action="store_true", help="also microbenchmark each part")
    args = parser.parse_args()
    if args.quick:
        args.n, args.rounds, args.repeat = 200, 1, 1
    if args.child:
        child(args.child, args.n, args.rounds)
        return
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for config in CONFIGS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", config, "-n", str(args.n), "--rounds", str(args.rounds)],
                capture_output=True, text=True, check=True, cwd=ROOT,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "agent")},
            )
            us = json.loads(out.stdout.strip().splitlines()[-1])["us"]
            best[config] = min(us, best.get(config, float("inf")))
    base = best["agent, request-path signals off"]
    width = max(len(c) for c in CONFIGS)
    print(f"{'configuration':<{width}}  CPU us/request  vs signals off")
    for config in CONFIGS:
        delta = "" if config == "bare" else f"{best[config] - base:+8.1f} us"
        print(f"{config:<{width}}  {best[config]:14.1f}  {delta}")
    if args.parts:
        sys.path.insert(0, str(ROOT / "agent"))
        rows = parts()
        width = max(len(name) for name, _ in rows)
        print(f"\n{'part':<{width}}  CPU us")
        for name, us in rows:
            print(f"{name:<{width}}  {us:6.2f}")


if __name__ == "__main__":
    main()
