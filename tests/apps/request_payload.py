"""Responses large and small, compressed or not. GZIP=1 installs GZipMiddleware (the healthy twin of
the large report). Lines the tests look for carry a ``# mark:`` comment."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import json
import os
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse

app = FastAPI()
if os.environ.get("GZIP") == "1":
    app.add_middleware(GZipMiddleware, minimum_size=1000)

# About 2 MB of JSON, built once (a cached report): sending it is the only work per request.
REPORT = json.dumps(
    [{"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"], "note": "n" * 40} for i in range(20000)]
).encode()
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4096  # 1 MiB, already compressed media
ROWS = [{"id": i, "name": f"row {i}", "score": i / 7} for i in range(100)]


class Status(enum.Enum):
    OPEN = "open"


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    placed: datetime.datetime
    total: decimal.Decimal
    status: Status
    lines: list[dict[str, Any]]


# Objects that are costly to encode (dataclasses, UUIDs, dates, decimals): about 60 KB of JSON.
ORDERS = [
    Order(uuid.UUID(int=i), datetime.datetime(2024, 1, 1), decimal.Decimal("12.50"), Status.OPEN,
          [{"sku": f"s{j}", "qty": j} for j in range(3)])
    for i in range(300)
]


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/report")
async def report() -> Response:  # mark: large report
    return Response(REPORT, media_type="application/json")


@app.get("/image")
async def image() -> Response:
    return Response(PNG, media_type="image/png")


@app.get("/small")
async def small() -> dict[str, int]:
    return {"answer": 42}


# No response model: FastAPI encodes with jsonable_encoder (the slow path); with one, pydantic-core would.
@app.get("/orders", response_model=None)
async def orders():  # type: ignore[no-untyped-def]  # mark: costly serialisation
    return ORDERS


@app.get("/orders/page", response_model=None)
async def orders_page():  # type: ignore[no-untyped-def]
    return ORDERS[:5]


@app.get("/rows/json")
async def rows_json() -> JSONResponse:
    return JSONResponse(jsonable_encoder(ROWS))


CHUNK = b"0123456789abcdef" * 640  # 10 KiB


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def chunks() -> Any:
        for _ in range(10):
            await asyncio.sleep(0)
            yield CHUNK

    return StreamingResponse(chunks(), media_type="text/plain")
