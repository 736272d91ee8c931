"""A FastAPI app on a real database (DB_URL: sqlite+aiosqlite file or postgresql+asyncpg) with a
healthy and a sick route per pool problem. Lines the tests look for carry a ``# mark:`` comment."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

DB_URL = os.environ["DB_URL"]
engine = create_async_engine(
    DB_URL,
    pool_size=int(os.environ.get("POOL_SIZE", "5")),
    max_overflow=int(os.environ.get("MAX_OVERFLOW", "0")),
    pool_timeout=float(os.environ.get("POOL_TIMEOUT", "30")),
)
SYNC_DB_URL = os.environ.get("SYNC_DB_URL")
sync_engine = create_engine(SYNC_DB_URL, pool_size=2, max_overflow=0) if SYNC_DB_URL else None

gate = asyncio.Event()
kept: list[AsyncSession] = []  # sessions never closed and kept alive (a leak)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))
        await conn.execute(text("DELETE FROM items"))
        await conn.execute(
            text("INSERT INTO items (id, name) VALUES (:id, :name)"),
            [{"id": i, "name": f"item {i}"} for i in range(1, 51)],
        )
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with AsyncSession(engine) as session:
        yield session


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items/{item_id}")
async def item(item_id: int, session: AsyncSession = Depends(get_session)) -> dict[str, object]:
    name = (await session.execute(text("SELECT name FROM items WHERE id = :id"), {"id": item_id})).scalar_one()
    return {"id": item_id, "name": name}


@app.get("/missing_table")
async def missing_table(session: AsyncSession = Depends(get_session)) -> dict[str, object]:
    """A statement the database refuses: the request fails with a 500."""
    await session.execute(text("SELECT name FROM no_such_table"))
    return {}


@app.get("/hold")
async def hold(session: AsyncSession = Depends(get_session)) -> dict[str, str]:
    """Holds its connection until the gate opens (the tests read the pool meanwhile)."""
    await session.execute(text("SELECT 1"))  # mark: hold
    await asyncio.wait_for(gate.wait(), 60)
    return {"status": "released"}


@app.post("/gate/{state}")
async def set_gate(state: str) -> dict[str, str]:
    gate.set() if state == "open" else gate.clear()
    return {"gate": state}


@app.get("/pool")
async def pool_status() -> dict[str, int]:
    pool = engine.sync_engine.pool
    return {
        "checkedout": pool.checkedout(),
        "checkedin": pool.checkedin(),
        "overflow": pool.overflow(),
        "size": pool.size(),
    }


@app.get("/leak")
async def leak() -> dict[str, str]:
    session = AsyncSession(engine)
    await session.execute(text("SELECT 1"))  # mark: leak
    kept.append(session)  # never closed, still referenced: the connection stays checked out
    return {"status": "leaked"}


@app.get("/unclosed")
async def unclosed() -> dict[str, str]:
    session = AsyncSession(engine)
    await session.execute(text("SELECT 1"))  # mark: unclosed
    return {"status": "dropped"}  # never closed: the garbage collector returns the connection


@app.get("/sync/unclosed")
def sync_unclosed() -> dict[str, str]:
    assert sync_engine is not None
    session = Session(sync_engine)
    session.execute(text("SELECT 1"))  # mark: sync-unclosed
    return {"status": "dropped"}


@app.post("/gc")
async def collect() -> dict[str, int]:
    return {"collected": gc.collect()}


@app.get("/n_plus_one")
async def n_plus_one(n: int = 15, session: AsyncSession = Depends(get_session)) -> list[str]:
    names = []
    for item_id in range(1, n + 1):
        result = await session.execute(text("SELECT name FROM items WHERE id = :id"), {"id": item_id})  # mark: n+1
        names.append(result.scalar_one())
    return names


@app.get("/one_query")
async def one_query(n: int = 15, session: AsyncSession = Depends(get_session)) -> list[str]:
    query = text("SELECT name FROM items WHERE id IN :ids ORDER BY id").bindparams(bindparam("ids", expanding=True))
    return list((await session.execute(query, {"ids": list(range(1, n + 1))})).scalars())


@app.get("/engine_per_request")
async def engine_per_request() -> dict[str, int]:
    per_request = create_async_engine(DB_URL)  # mark: engine-per-request
    async with per_request.connect() as conn:
        value = (await conn.execute(text("SELECT 1"))).scalar_one()
    await per_request.dispose()
    return {"value": value}
