"""An app whose requests exercise the request and slow-query logs: fast, slow, failing, with a
finding, a slow SQL statement (an SQLite function that sleeps) and a storm of identical errors."""

import asyncio
import logging
import os
import time

from fastapi import FastAPI, Response
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

from fastapi_doctor import _agent

app = FastAPI()
log = logging.getLogger("logs_app")

engine = create_engine("sqlite:///" + os.environ.get("LOGS_APP_DB", ":memory:"))


async_engine = create_async_engine("sqlite+aiosqlite://")


def _sleep_ms(ms):
    time.sleep(ms / 1000.0)
    return ms


@event.listens_for(engine, "connect")
@event.listens_for(async_engine.sync_engine, "connect")
def _functions(dbapi_connection, _record):
    dbapi_connection.create_function("sleep_ms", 1, _sleep_ms)


@app.get("/fast")
async def fast() -> dict[str, bool]:
    return {"ok": True}


@app.get("/slow")
async def slow(token: str = "") -> dict[str, bool]:
    await asyncio.sleep(float(os.environ.get("LOGS_APP_SLOW_S", "0.4")))
    return {"ok": True}


@app.get("/error")
async def error() -> None:
    raise RuntimeError("the endpoint failed")


@app.get("/storm")
async def storm() -> Response:
    return Response(b"unavailable", status_code=503)


@app.get("/finding")
async def finding() -> dict[str, bool]:
    _agent.get().findings.report(
        "n_plus_one", route="/finding", summary="raised by the test app", evidence={"statements": 12}
    )
    return {"ok": True}


@app.get("/query")
def query(token: str = "") -> dict[str, int]:
    with engine.connect() as conn:
        slow_ms = int(os.environ.get("LOGS_APP_QUERY_MS", "400"))
        value = conn.execute(  # the slow statement
            text(f"SELECT sleep_ms({slow_ms}) WHERE :token = :token OR 'literal-{token}' = 'x'"), {"token": token}
        ).scalar()
        conn.execute(text("SELECT :token"), {"token": token}).scalar()  # a fast one: not logged
    return {"slept_ms": value or 0}


@app.get("/query_async")
async def query_async(token: str = "") -> dict[str, int]:
    async with async_engine.connect() as conn:
        slow_ms = int(os.environ.get("LOGS_APP_QUERY_MS", "400"))
        result = await conn.execute(text("SELECT sleep_ms(:ms) + 0 * length(:token)"), {"ms": slow_ms, "token": token})  # async
        return {"slept_ms": result.scalar() or 0}


@app.get("/applog")
async def applog(token: str = "") -> dict[str, bool]:
    log.warning("handling applog")
    return {"ok": True}
