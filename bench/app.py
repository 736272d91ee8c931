"""The benchmarked app: a hello route, and a route with two dependencies and one SQLite query behind
two middlewares (the shape of a typical small service)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator

from fastapi import Depends, FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

_DB = os.path.join(tempfile.gettempdir(), f"fastapi-doctor-bench-{os.getpid()}.sqlite")


class RequestIdMiddleware:
    """A light pure ASGI middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["request_id"] = id(scope)
        await self.app(scope, receive, send)


class ServerTimingMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers["x-served-by"] = "bench"
        return response


app = FastAPI()
app.add_middleware(ServerTimingMiddleware)
app.add_middleware(RequestIdMiddleware)


def _setup() -> None:
    with sqlite3.connect(_DB) as db:
        db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?)", [(i, f"item-{i}") for i in range(100)])


_setup()


def get_db() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(_DB, check_same_thread=False)
    try:
        yield db
    finally:
        db.close()


def get_user(request: Request) -> str:
    return request.headers.get("x-user", "anonymous")


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/items/{item_id}")
def item(item_id: int, db: sqlite3.Connection = Depends(get_db), user: str = Depends(get_user)) -> dict[str, object]:
    row = db.execute("SELECT id, name FROM items WHERE id = ?", (item_id % 100,)).fetchone()
    return {"id": row[0], "name": row[1], "user": user}


@app.get("/raw/{name}")
async def raw(name: str) -> dict[str, str]:
    return {"name": name}
