"""An async SQLAlchemy app whose session dependency builds a new engine in every request (the grillazz
trial's mistake), used by three routes of an included router: one mistake, one finding at its line."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

DB_URL = os.environ.get("DB_URL", "sqlite+aiosqlite:///./engine_per_request.db")


async def get_db() -> AsyncIterator[AsyncSession]:
    engine = create_async_engine(DB_URL)  # mark: engine-per-request
    async with AsyncSession(engine) as session:
        yield session
    await engine.dispose()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(DB_URL)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS stuff (id INTEGER PRIMARY KEY, name TEXT)"))
        await conn.execute(text("INSERT OR IGNORE INTO stuff (id, name) VALUES (1, 'one'), (2, 'two')"))
    await engine.dispose()
    yield


stuff = APIRouter(prefix="/stuff", tags=["stuff"])


@stuff.get("/")
async def list_stuff(db: AsyncSession = Depends(get_db)) -> list[str]:
    return list((await db.execute(text("SELECT name FROM stuff ORDER BY id"))).scalars())


@stuff.get("/{stuff_id}")
async def get_stuff(stuff_id: int, db: AsyncSession = Depends(get_db)) -> dict[str, str | None]:
    name = (await db.execute(text("SELECT name FROM stuff WHERE id = :id"), {"id": stuff_id})).scalar()
    return {"name": name}


@stuff.post("/")
async def count_stuff(db: AsyncSession = Depends(get_db)) -> dict[str, int]:
    return {"count": (await db.execute(text("SELECT count(*) FROM stuff"))).scalar_one()}


app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["https://example.com"], allow_methods=["*"])
app.include_router(stuff, prefix="/api/v1")
