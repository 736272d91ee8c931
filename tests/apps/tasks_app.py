"""Asyncio tasks in an app shaped like a real one: an orders router whose notification is a
fire-and-forget task that never ends (it piles up), a replies router that drops its task without a
reference (the garbage collector destroys it while pending), workers started in the lifespan, a long
event stream, and healthy twins (BackgroundTasks, gather, a queue for the workers)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, BackgroundTasks, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse

jobs: asyncio.Queue[int] | None = None
shutdown: asyncio.Event | None = None


async def wait_for_delivery(order_id: int) -> None:
    """Waits for a delivery report that never comes."""
    assert shutdown is not None
    await shutdown.wait()


async def wait_for_reply(reply_id: int) -> None:
    """Awaits a future that only this task refers to."""
    await asyncio.get_running_loop().create_future()


async def audit(order_id: int) -> int:
    await asyncio.sleep(0.001)
    return order_id


async def worker() -> None:
    assert jobs is not None
    while True:
        await jobs.get()
        jobs.task_done()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global jobs, shutdown
    jobs = asyncio.Queue()
    shutdown = asyncio.Event()
    workers = [asyncio.create_task(worker()) for _ in range(3)]  # mark: workers
    yield
    shutdown.set()
    for task in workers:
        task.cancel()


orders = APIRouter(prefix="/orders", tags=["orders"])


@orders.post("/{order_id}/notify")
async def notify(order_id: int) -> dict[str, int]:
    asyncio.create_task(wait_for_delivery(order_id))  # mark: fire-and-forget
    return {"queued": order_id}


@orders.post("/v2/{order_id}/notify")
async def notify_v2(order_id: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(audit, order_id)
    return {"queued": order_id}


@orders.get("/{order_id}/summary")
async def summary(order_id: int) -> dict[str, list[int]]:
    audited = await asyncio.gather(audit(order_id), audit(order_id + 1))
    assert jobs is not None
    await jobs.put(order_id)
    return {"audited": list(audited)}


@orders.post("/{order_id}/ping")
async def ping(order_id: int) -> dict[str, int]:
    asyncio.create_task(audit(order_id))  # a short fire-and-forget: done long before the limit
    return {"pinged": order_id}


replies = APIRouter(prefix="/replies", tags=["replies"])


@replies.post("/{reply_id}")
async def reply(reply_id: int) -> dict[str, int]:
    asyncio.create_task(wait_for_reply(reply_id))  # mark: dropped
    return {"sent": reply_id}


events = APIRouter(prefix="/events", tags=["events"])


@events.get("/stream")
async def stream(seconds: float = 1.0) -> StreamingResponse:
    async def ticks() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            yield b"data: tick\n\n"
            await asyncio.sleep(0.1)

    return StreamingResponse(ticks(), media_type="text/event-stream")


app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["https://shop.example"], allow_methods=["*"])
app.include_router(orders)
app.include_router(replies)
app.include_router(events)


@app.get("/")
async def root() -> dict[str, bool]:
    return {"ok": True}


@app.post("/collect")
async def collect() -> dict[str, int]:
    """Test control: a full collection now (what would happen on its own later)."""
    return {"collected": gc.collect()}
