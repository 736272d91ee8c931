"""Run as a script: instrument an app in code, serve requests in-process (real ASGI through httpx),
uninstrument, and print what changed and what was put back (JSON)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import starlette.responses
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from starlette.middleware.base import BaseHTTPMiddleware

import fastapi.dependencies.utils
import fastapi.routing


def settings() -> dict[str, str]:
    return {"region": "eu"}


async def repository(cfg: dict[str, str] = Depends(settings)) -> str:
    return f"repo:{cfg['region']}"


async def session(repo: str = Depends(repository)) -> AsyncIterator[str]:
    yield f"session:{repo}"


def real_clock() -> str:
    return "real"


def fake_clock() -> str:
    return "fake"


class Stamp:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class Light(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Any:
        return await call_next(request)


app = FastAPI()
app.add_middleware(Light)
app.add_middleware(Stamp)
app.add_middleware(GZipMiddleware, minimum_size=100)
app.dependency_overrides[real_clock] = fake_clock


@app.get("/items")
async def items(s: str = Depends(session), clock: str = Depends(real_clock)) -> dict[str, object]:
    return {"session": s, "clock": clock, "rows": list(range(200))}


def dependant_calls() -> list[str]:
    out = []
    for route in app.router.routes:
        pending = list(getattr(getattr(route, "dependant", None), "dependencies", []))
        while pending:
            d = pending.pop()
            out.append(f"{type(d.call).__module__}.{type(d.call).__qualname__}")
            pending.extend(d.dependencies)
    return sorted(out)


def chain(stack: Any) -> list[str]:
    names = []
    while stack is not None and len(names) < 64:
        names.append(f"{type(stack).__module__}.{type(stack).__qualname__}")
        stack = getattr(stack, "app", None)
    return names


PATCH_POINTS = {
    "routing.solve_dependencies": lambda: fastapi.routing.solve_dependencies,
    "utils.solve_dependencies": lambda: fastapi.dependencies.utils.solve_dependencies,
    "routing.serialize_response": lambda: fastapi.routing.serialize_response,
    "JSONResponse.render": lambda: starlette.responses.JSONResponse.__dict__["render"],
    "httpx.Client.__init__": lambda: httpx.Client.__dict__["__init__"],
    "httpx.AsyncClient.__init__": lambda: httpx.AsyncClient.__dict__["__init__"],
}


async def serve(n: int) -> list[tuple[int, list[tuple[str, str]], str]]:
    out = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for _ in range(n):
            r = await client.get("/items", headers={"accept-encoding": "gzip"})
            out.append((r.status_code, sorted(r.headers.items()), r.text))
    return out


def main() -> None:
    import fastapi_doctor
    from fastapi_doctor import _agent

    before = {name: get() for name, get in PATCH_POINTS.items()}
    calls_before = dependant_calls()
    fastapi_doctor.instrument(
        app, prometheus_port=0, disabled_detectors="eventloop,threadpool,gc,process,db,asyncpg,tasks,logs"
    )
    agent = _agent.get()
    assert agent is not None
    with httpx.Client():
        pass  # a client outside any request: not counted
    responses = asyncio.run(serve(3))
    during = {name: get() is not before[name] for name, get in PATCH_POINTS.items()}
    calls_during = dependant_calls()
    chain_during = chain(app.middleware_stack)
    signals = {s.name: s for s in agent.signals}
    series = sorted(
        dict(key)["fastapi_doctor.dependency"] for key in signals["dependencies"]._histogram.values()
    )
    hooks = agent.request_metrics.finished_hooks
    hooks_during = sorted(getattr(h, "__qualname__", "?") for h in hooks)
    # The override goes: the real dependency is called again, and timed.
    del app.dependency_overrides[real_clock]
    clock_without_override = json.loads(asyncio.run(serve(1))[0][2])["clock"]
    series_without_override = sorted(
        dict(key)["fastapi_doctor.dependency"] for key in signals["dependencies"]._histogram.values()
    )
    app.dependency_overrides[real_clock] = fake_clock

    fastapi_doctor.uninstrument()
    after = {name: get() is before[name] for name, get in PATCH_POINTS.items()}
    responses_after = asyncio.run(serve(1))
    print(
        json.dumps(
            {
                "patched_during": during,
                "restored_after": after,
                "calls_before": calls_before,
                "calls_during": calls_during,
                "calls_after": dependant_calls(),
                "chain_during": chain_during,
                "chain_after": chain(app.middleware_stack),
                "dependency_series": series,
                "clock_without_override": clock_without_override,
                "series_without_override": series_without_override,
                "hooks_during": hooks_during,
                "hooks_after": sorted(getattr(h, "__qualname__", "?") for h in hooks),
                "responses": responses,
                "responses_after": responses_after,
            }
        )
    )


if __name__ == "__main__":
    main()
