"""An app whose engine (and a pooled connection) exist before the agent: instrument() in code, last."""

import os

from fastapi import FastAPI
from sqlalchemy import create_engine, text

engine = create_engine(os.environ["SYNC_DB_URL"], pool_size=2, max_overflow=1)
with engine.connect() as conn:  # the pool has an idle connection before the agent starts
    conn.execute(text("SELECT 1"))

app = FastAPI()
kept = []


@app.get("/")
def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/query")
def query() -> dict[str, int]:
    with engine.connect() as conn:
        return {"value": conn.execute(text("SELECT 42")).scalar_one()}


@app.get("/leak")
def leak() -> dict[str, str]:
    conn = engine.connect()  # mark: in-code-leak
    kept.append(conn)
    return {"status": "leaked"}


import fastapi_doctor  # noqa: E402

fastapi_doctor.instrument(app)
