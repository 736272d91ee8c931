"""An app with one route per way of blocking the event loop, and healthy twins."""

import asyncio
import gc
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio.to_thread
from fastapi import FastAPI, Request

import loop_helpers


@asynccontextmanager
async def lifespan(app: FastAPI):
    # A small threadpool, so saturating it takes few requests.
    anyio.to_thread.current_default_thread_limiter().total_tokens = 4
    yield


app = FastAPI(lifespan=lifespan)
_heap: list = []


@app.middleware("http")
async def audit(request: Request, call_next):
    if request.url.path == "/audited":
        loop_helpers.audit_trail(0.3)
    return await call_next(request)


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/healthy")
async def healthy() -> dict[str, str]:
    await asyncio.sleep(0.01)
    return {"status": "ok"}


@app.get("/report")
async def report() -> dict[str, str]:
    return {"report": loop_helpers.fetch_report(0.3)}


@app.get("/checksum")
async def checksum() -> dict[str, int]:
    return {"checksum": loop_helpers.checksum(0.3)}


@app.get("/audited")
async def audited() -> dict[str, str]:
    return {"status": "ok"}


ROWS = [{"id": i, "name": f"row {i}", "tags": ["a", "b"], "score": i / 7} for i in range(40000)]


@app.get("/export")
async def export():
    # About 3 MB of JSON, returned at once: serialising it (jsonable_encoder, json.dumps) blocks the loop.
    return {"rows": ROWS}


@app.get("/pdf")
def pdf() -> dict[str, int]:
    return {"bytes": len(loop_helpers.render_pdf(1.0))}


@app.post("/gc/heap")
async def build_heap() -> dict[str, int]:
    _heap.extend([i] for i in range(1_000_000))
    return {"objects": len(_heap)}


@app.post("/gc/collect")
async def collect() -> dict[str, int]:
    return {"collected": gc.collect()}


@dataclass
class Receipt:
    number: int
    # Waits for the fiscal printer's acknowledgement: a blocking call run by the dataclass's generated
    # __init__ (code in "<string>"), not by a line of this file.
    printed: None = field(default_factory=partial(time.sleep, 0.3))


@app.post("/receipts")
async def print_receipt() -> dict[str, int]:
    receipt = Receipt(number=1)  # RECEIPT-INIT
    return {"number": receipt.number}
