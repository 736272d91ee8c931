"""A notes service shaped like a real one (an APIRouter with a prefix, CORSMiddleware, lifespan start-up
work) whose async route uses the app's sync SQLAlchemy engine: each query is ~1 ms on the event loop,
far below the loop watchdog's threshold, and still a blocking call. Its healthy twins: a sync ``def``
route doing the same (run in the threadpool), and an async route on an async engine. Lines the tests
look for carry a ``# mark:`` comment."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.ext.asyncio import create_async_engine

DB_PATH = os.environ["DB_PATH"]
engine = create_engine(f"sqlite:///{DB_PATH}")
async_engine = create_async_engine(f"sqlite+aiosqlite:///{DB_PATH}")

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("text", String(200)))


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # Start-up work on the loop with the sync engine: once, before the app serves; not a finding.
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(notes.insert(), [{"id": i, "text": f"note {i}"} for i in range(1, 11)])
    yield
    await async_engine.dispose()
    engine.dispose()


def _found(row: object) -> dict[str, object]:
    if row is None:
        raise HTTPException(status_code=404, detail="Note not found")
    return {"id": row.id, "text": row.text}  # type: ignore[attr-defined]


router = APIRouter()


@router.get("/{note_id}")
async def read_note(note_id: int) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(select(notes).where(notes.c.id == note_id)).first()  # mark: sync query on the loop
    return _found(row)


@router.get("/{note_id}/sync")
def read_note_sync(note_id: int) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(select(notes).where(notes.c.id == note_id)).first()
    return _found(row)


@router.get("/{note_id}/async")
async def read_note_async(note_id: int) -> dict[str, object]:
    async with async_engine.connect() as conn:
        row = (await conn.execute(select(notes).where(notes.c.id == note_id))).first()
    return _found(row)


app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
app.include_router(router, prefix="/notes", tags=["notes"])
