"""Dependencies of every kind, each sick one with a healthy twin. Lines the tests look for carry a
``# mark:`` comment. Slow parts await (I/O-like), so no blocked loop gets in the way."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import lru_cache

import httpx
from fastapi import APIRouter, Depends, FastAPI, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

shared_client: httpx.AsyncClient | None = None


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global shared_client
    shared_client = httpx.AsyncClient()  # mark: client at start-up
    yield
    await shared_client.aclose()


calls = {"app_level": 0}


async def app_level() -> None:
    calls["app_level"] += 1


app = FastAPI(lifespan=lifespan, dependencies=[Depends(app_level)])


async def load_settings() -> dict[str, str]:  # mark: slow dependency
    await asyncio.sleep(0.04)  # reads a remote config on every request
    return {"region": "eu"}


@lru_cache
def cached_settings() -> dict[str, str]:  # mark: cached dependency
    return {"region": "eu"}


async def current_user(settings: dict[str, str] = Depends(cached_settings)) -> str:
    return "ada"


async def audit(user: str = Depends(current_user)) -> str:
    # current_user again: FastAPI's per-request cache hands the same value, no second build.
    return f"audit:{user}"


async def session() -> AsyncIterator[str]:  # mark: generator with slow teardown
    yield "session"
    await asyncio.sleep(0.03)  # commit and close on the way out


def sync_resource() -> Iterator[str]:
    yield "resource"


class Pagination:
    def __init__(self, limit: int = 10) -> None:
        self.limit = limit


class Checker:
    async def __call__(self) -> bool:
        return True


bearer = HTTPBearer(auto_error=False)


async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:  # mark: client per request
        yield client


def shared() -> httpx.AsyncClient:
    assert shared_client is not None
    return shared_client


async def quick_lookup() -> str:  # mark: waits while others block
    await asyncio.sleep(0.005)
    return "ok"


@app.get("/deps/waits")
async def waits_route(value: str = Depends(quick_lookup)) -> dict[str, str]:
    return {"value": value}


@app.get("/blocks")
async def blocks_route() -> dict[str, str]:
    time.sleep(0.25)  # blocks the loop: every dependency awaiting meanwhile waits too
    return {"status": "done"}


@app.get("/deps/slow")
async def slow_route(settings: dict[str, str] = Depends(load_settings)) -> dict[str, str]:
    return settings


@app.get("/deps/cached")
async def cached_route(user: str = Depends(current_user), trail: str = Depends(audit)) -> dict[str, str]:
    return {"user": user, "trail": trail}


@app.get("/deps/teardown")
async def teardown_route(s: str = Depends(session)) -> dict[str, str]:
    return {"s": s}


# A C call holds the GIL from start to end: sorting this takes tens of ms on this machine.
_UNSORTED = [random.random() for _ in range(300_000)]


@app.get("/deps/teardown-beside-a-busy-thread")
async def teardown_beside_a_busy_thread_route(s: str = Depends(session)) -> dict[str, str]:
    # A thread of the app's holds the GIL while the session's teardown awaits: the loop runs late.
    threading.Thread(target=sorted, args=(_UNSORTED,), daemon=True).start()
    return {"s": s}


@app.get("/deps/kinds")
def kinds_route(
    resource: str = Depends(sync_resource),
    page: Pagination = Depends(),
    ok: bool = Depends(Checker()),
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
) -> dict[str, object]:
    return {"resource": resource, "limit": page.limit, "ok": ok, "auth": credentials is not None}


@app.get("/clients/per-request")
async def per_request_client(client: httpx.AsyncClient = Depends(http_client)) -> dict[str, bool]:
    return {"closed": client.is_closed}


@app.get("/clients/shared")
async def shared_client_route(client: httpx.AsyncClient = Depends(shared)) -> dict[str, bool]:
    return {"closed": client.is_closed}


def router_level() -> None:
    time.sleep(0)


router = APIRouter(prefix="/v1", dependencies=[Depends(router_level)])


@router.get("/ping")
async def ping() -> dict[str, bool]:
    return {"pong": True}


app.include_router(router)


@app.get("/")
async def root() -> dict[str, object]:
    return {"status": "ok", "app_level_calls": calls["app_level"]}


@app.get("/late/add")
async def add_late_route() -> dict[str, bool]:
    """Adds a route after start-up: it must be timed too."""

    async def late_dependency() -> str:  # mark: late dependency
        await asyncio.sleep(0.001)
        return "late"

    async def late(value: str = Depends(late_dependency)) -> dict[str, str]:
        return {"value": value}

    if not any(getattr(r, "path", None) == "/late" for r in app.router.routes):
        app.add_api_route("/late", late)
    return {"added": True}
