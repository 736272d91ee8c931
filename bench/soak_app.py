"""The soak test's app (bench/soak.py): a router with an auth dependency, a sync route on SQLite, an
async route, a large response, and two routes that give findings now and then (a blocking call on the
event loop, an N+1 loop of queries)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.middleware.cors import CORSMiddleware

_DB = os.environ.get("SOAK_DB") or os.path.join(tempfile.gettempdir(), "fastapi-doctor-soak.sqlite")


def setup() -> None:
    """Create the table (run once by bench/soak.py before the workers start)."""
    with sqlite3.connect(_DB) as db:
        db.execute("CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, name TEXT, owner INTEGER)")
        if db.execute("SELECT count(*) FROM item").fetchone()[0] == 0:
            db.executemany("INSERT INTO item (name, owner) VALUES (?, ?)", [(f"item-{i}", i % 7) for i in range(200)])



def session() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(_DB, check_same_thread=False)
    try:
        yield db
    finally:
        db.close()


def current_user(authorization: str = Header(default="Bearer soak-user")) -> dict[str, str]:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401)
    return {"name": token}


router = APIRouter(prefix="/api", dependencies=[Depends(current_user)])


@router.get("/items/{item_id}")
def read_item(item_id: int, db: sqlite3.Connection = Depends(session)) -> dict[str, object]:
    row = db.execute("SELECT id, name FROM item WHERE id = ?", (item_id % 200 + 1,)).fetchone()
    return {"id": row[0], "name": row[1]}


@router.get("/owners")
def owners(db: sqlite3.Connection = Depends(session)) -> list[dict[str, object]]:
    # One query per owner: an N+1 the agent names.
    out = []
    for owner in range(12):
        out.append({"owner": owner, "items": db.execute("SELECT count(*) FROM item WHERE owner = ?", (owner,)).fetchone()[0]})
    return out


@router.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@router.get("/report")
async def report() -> dict[str, str]:
    return {"data": "x" * 300_000}  # a large payload


@router.get("/slow")
async def slow() -> dict[str, str]:
    time.sleep(0.15)  # blocks the event loop: a blocking_io finding
    return {"slow": "yes"}


app = FastAPI()
app.add_middleware(CORSMiddleware, allow_origins=["https://example.com"], allow_methods=["GET"])
app.include_router(router)
