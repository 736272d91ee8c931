"""An app that receives secrets every way a real one does (the secrets test searches the agent's output).

``DATABASE_URL`` (with a password) comes from the environment; the test's secrets arrive in headers,
query strings, bodies, bound SQL values, SQL literals and exception messages.
"""

import os

from fastapi import FastAPI, Header, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=2)
app = FastAPI()


class Login(BaseModel):
    user: str
    password: str


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/search")
async def search(token: str, page: int = 1, authorization: str | None = Header(default=None)) -> dict[str, object]:
    return {"page": page, "token_length": len(token), "authorized": authorization is not None}


@app.post("/login")
async def login(body: Login, request: Request) -> dict[str, object]:
    return {"user_length": len(body.user), "cookies": len(request.cookies)}


@app.get("/db/literal")
async def db_literal(secret: str) -> dict[str, object]:
    # A statement with the value inlined (what an ORM's literal_binds or a hand-written query does).
    quoted = secret.replace("'", "''")
    async with engine.connect() as conn:
        row = (await conn.execute(text(f"SELECT length('{quoted}') AS n"))).one()
    return {"n": row.n}


@app.get("/db/bound")
async def db_bound(secret: str) -> dict[str, object]:
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT length(CAST(:v AS text)) AS n"), {"v": secret})).one()
    return {"n": row.n}


@app.get("/db/error")
async def db_error(secret: str) -> dict[str, object]:
    # PostgreSQL puts the bad value in its error message; the driver's exception carries it.
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT CAST(:v AS integer)"), {"v": secret})
    except Exception as exc:
        raise HTTPException(status_code=400, detail="bad value") from exc
    return {}


@app.get("/fail")
async def fail(secret: str) -> None:
    raise HTTPException(status_code=422, detail="rejected")


@app.get("/crash")
async def crash(secret: str) -> None:
    raise RuntimeError(f"failed for {secret}")
