"""Middleware of every kind, heavy and light. The heavy ones await (an auth or rate-limit call), so
no blocked loop gets in the way; the light ones are their healthy twins. Lines the tests look for
carry a ``# mark:`` comment."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import StreamingResponse

app = FastAPI()


class LightMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Any:  # mark: light base
        response = await call_next(request)
        response.headers["x-light"] = "1"
        return response


class SlowSendMiddleware:
    """Pure ASGI: its work happens in ``send``, once per body message (a streaming signer)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # mark: heavy asgi
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def signing_send(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await asyncio.sleep(0.03)
            await send(message)

        await self.app(scope, receive, signing_send)


class HeaderASGI:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # mark: light asgi
        async def with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-asgi", b"1"))
            await send(message)

        await self.app(scope, receive, with_header)


class BoundASGI:
    """Calls its inner app by a reference of its own, not ``.app``: its self-time cannot be known."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.handler = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.handler(scope, receive, send)


app.add_middleware(BoundASGI)
app.add_middleware(LightMiddleware)
app.add_middleware(HeaderASGI)


@app.middleware("http")
async def check_quota(request: Request, call_next: Any) -> Any:  # mark: heavy http
    await asyncio.sleep(0.04)  # asks a rate limiter over the network
    return await call_next(request)


app.add_middleware(SlowSendMiddleware)
app.add_middleware(GZipMiddleware, minimum_size=1000)
app.add_middleware(CORSMiddleware, allow_origins=["https://example.com"])


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/work")
async def work() -> dict[str, str]:
    await asyncio.sleep(0.05)  # the endpoint's own time is not any middleware's
    return {"done": "yes"}


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def chunks() -> Any:
        for i in range(8):
            await asyncio.sleep(0.005)
            yield f"chunk {i} ".encode() * 512

    return StreamingResponse(chunks(), media_type="text/plain")
