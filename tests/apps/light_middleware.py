"""A healthy app with the two usual kinds of middleware, both light: under load nothing here is slow."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware


class StampMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["x-stamp"] = "1"
        return response


class RequestIdASGI:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["request_id"] = id(scope)
        await self.app(scope, receive, send)


app = FastAPI()
app.add_middleware(StampMiddleware)
app.add_middleware(RequestIdASGI)


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}
