"""An internal FastAPI app mounted under /internal, with its own request-id middleware."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request

internal = FastAPI()


@internal.middleware("http")
async def request_id(request: Request, call_next):
    response = await call_next(request)
    response.headers["x-request-id"] = "1"
    return response


@internal.get("/ping/{name}")
async def ping(name: str) -> dict:
    time.sleep(0.3)  # mark: sleep in mounted app
    return {"pong": name}


@internal.get("/health/{name}")
async def health(name: str) -> dict:
    await asyncio.sleep(0.01)
    return {"ok": name}
