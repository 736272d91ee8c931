"""The patient: a small FastAPI service with a sick route per root cause and healthy twins."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI

app = FastAPI(title="patient")


@app.get("/healthy")
async def healthy() -> dict[str, str]:
    await asyncio.sleep(0.01)
    return {"status": "ok"}


@app.get("/blocking")
async def blocking() -> dict[str, str]:
    time.sleep(0.3)  # blocks the event loop: every concurrent request waits
    return {"status": "slow"}


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"id": item_id}
