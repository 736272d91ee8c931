"""A remote service that answers slowly (``/slow?seconds=``): the upstream of a test app."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/slow")
async def slow(seconds: float = 1.0) -> dict[str, str]:
    await asyncio.sleep(seconds)
    return {"status": "late"}
