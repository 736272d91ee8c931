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
absolute numbers move; compare lines of one run.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="alternations of all configurations")
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


if __name__ == "__main__":
    main()
