"""A raw-asyncpg service (no ORM), shaped like the real ones: a pool created in lifespan, a repository of
async functions (asyncpg_repo.py), routers with prefixes and an auth dependency (a signed token that
loads the user), CORS. Each pool problem has a sick route and a healthy twin. PG_DSN is the database;
POOL_MAX the pool's size; HOLD_S how long /reports/slow holds its connection; DIGEST_PARAGRAPHS the loop
work of /articles/digest per article. Lines the tests look for carry a ``# mark:`` comment."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import asyncpg_repo as repo
import databases
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel

DSN = os.environ["PG_DSN"]
POOL_MAX = int(os.environ.get("POOL_MAX", "5"))
HOLD_S = float(os.environ.get("HOLD_S", "0.2"))
DIGEST_PARAGRAPHS = int(os.environ.get("DIGEST_PARAGRAPHS", "20"))
SECRET = b"test-signing-key"
SALT = b"test-salt"
ARTICLES = 20

leaked: list[Any] = []  # connections acquired and never released (kept alive: a leak)
lazy_pool: asyncpg.Pool | None = None


def hash_password(password: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, 1000).hex()


def sign(user_id: int) -> str:
    mac = hmac.new(SECRET, str(user_id).encode(), hashlib.sha256).hexdigest()
    return f"{user_id}.{mac}"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=POOL_MAX)
    async with pool.acquire() as con:
        await repo.create_schema(con, articles=ARTICLES, password_hash=hash_password("correct horse"))
    shared = databases.Database(DSN, min_size=1, max_size=3)
    await shared.connect()
    app.state.pool, app.state.database = pool, shared
    yield
    await shared.disconnect()
    pool.terminate()  # close() would wait for the connections leaked on purpose


async def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


async def get_connection(pool: asyncpg.Pool = Depends(get_pool)) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the whole request (as the realworld example app's dependency does)."""
    async with pool.acquire() as con:
        yield con


async def leaky_connection(pool: asyncpg.Pool = Depends(get_pool)) -> AsyncIterator[asyncpg.Connection]:
    """The realworld trial's mistake: the connection acquired for the request is never released."""
    con = await pool.acquire()  # mark: leaky dependency
    yield con


async def current_user(authorization: str = Header(...), pool: asyncpg.Pool = Depends(get_pool)) -> asyncpg.Record:
    user_id, _, mac = authorization.removeprefix("Bearer ").partition(".")
    if not user_id.isdigit() or not hmac.compare_digest(sign(int(user_id)), f"{user_id}.{mac}"):
        raise HTTPException(401, "bad token")
    user = await repo.user_by_id(pool, int(user_id))
    if user is None:
        raise HTTPException(401, "unknown user")
    return user


class Login(BaseModel):
    email: str
    password: str


auth = APIRouter(prefix="/auth", tags=["auth"])


@auth.post("/token")
async def token(body: Login, pool: asyncpg.Pool = Depends(get_pool)) -> dict[str, str]:
    row = await pool.fetchrow("SELECT id, password_hash FROM users WHERE email = $1", body.email)
    if row is None or not hmac.compare_digest(row["password_hash"], hash_password(body.password)):
        raise HTTPException(401, "bad credentials")
    return {"access_token": sign(row["id"]), "token_type": "bearer"}


articles = APIRouter(prefix="/articles", tags=["articles"])


async def article_view(con: Any, row: asyncpg.Record, user_id: int) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "author": await repo.author_name(con, row["author_id"]),
        "tags": await repo.tags_of(con, row["id"]),
        "comments": await repo.comment_count(con, row["id"]),
        "favorited": await repo.favorited(con, row["id"], user_id),
    }


@articles.get("/")
async def list_articles(limit: int = 20, pool: asyncpg.Pool = Depends(get_pool),
                        user: asyncpg.Record = Depends(current_user)) -> list[dict[str, Any]]:
    """Four statements per listed article (an N+1)."""
    async with pool.acquire() as con:
        rows = await repo.list_articles(con, limit)
        page = []
        for row in rows:
            page.append(await article_view(con, row, user["id"]))  # mark: n+1
    return page


@articles.get("/feed")
async def feed(limit: int = 20, pool: asyncpg.Pool = Depends(get_pool),
               user: asyncpg.Record = Depends(current_user)) -> list[dict[str, Any]]:
    """The same page in one statement."""
    async with pool.acquire() as con:
        rows = await repo.article_feed(con, limit, user["id"])
    return [{**dict(r), "tags": list(r["tags"])} for r in rows]


def digest_of(row: asyncpg.Record) -> dict[str, Any]:
    """An article rendered as its document and summarised: a few milliseconds of Python per page."""
    document = json.dumps({"id": row["id"], "title": row["title"], "author": row["author"],
                           "tags": list(row["tags"]),
                           "paragraphs": [f"{row['title']} by {row['author']}, part {i}. " * 6
                                          for i in range(DIGEST_PARAGRAPHS)]})
    return {"id": row["id"], "title": row["title"], "bytes": len(document), "words": len(document.split()),
            "digest": hashlib.sha256(document.encode()).hexdigest()[:16]}


@articles.get("/digest")
async def digest(limit: int = 20, user: asyncpg.Record = Depends(current_user),
                 con: asyncpg.Connection = Depends(get_connection)) -> list[dict[str, Any]]:
    """Healthy, with real work on the loop per request: the page in one statement, then its digest. (The
    user is loaded first: its connection is back before the request's own is taken.)"""
    rows = await repo.article_feed(con, limit, user["id"])
    return [digest_of(row) for row in rows]


@articles.get("/authors")
async def article_authors(request: Request, limit: int = 20) -> list[dict[str, Any]]:
    """The same N+1 through `databases` (asyncpg underneath): one author query per article."""
    database = request.app.state.database
    rows = await database.fetch_all("SELECT id, author_id FROM articles ORDER BY id LIMIT :limit", {"limit": limit})
    out = []
    for row in rows:
        name = await database.fetch_val("SELECT name FROM authors WHERE id = :id", {"id": row["author_id"]})  # mark: databases-n+1
        out.append({"id": row["id"], "author": name})
    return out


reports = APIRouter(prefix="/reports", tags=["reports"], dependencies=[Depends(current_user)])


@reports.get("/leaky")
async def leaky(pool: asyncpg.Pool = Depends(get_pool)) -> dict[str, int]:
    con = await pool.acquire()  # mark: leak
    count = await repo.article_count(con)
    leaked.append(con)  # never released
    return {"articles": count}


@reports.get("/count")
async def count(pool: asyncpg.Pool = Depends(get_pool)) -> dict[str, int]:
    async with pool.acquire() as con:
        return {"articles": await repo.article_count(con)}


@reports.get("/slow")
async def slow(pool: asyncpg.Pool = Depends(get_pool)) -> dict[str, int]:
    """Holds its connection through slow work (a report built while the connection stays out)."""
    async with pool.acquire() as con:  # mark: hold
        count = await repo.article_count(con)
        await asyncio.sleep(HOLD_S)
    return {"articles": count}


tags = APIRouter(prefix="/tags", tags=["tags"])  # every route leaks through leaky_connection


@tags.get("/")
async def list_tags(con: asyncpg.Connection = Depends(leaky_connection)) -> list[str]:
    return await repo.tag_names(con)


@tags.get("/{tag}")
async def tagged(tag: str, con: asyncpg.Connection = Depends(leaky_connection)) -> dict[str, int]:
    return {"articles": await repo.tagged_count(con, tag)}


@tags.post("/{tag}/views")
async def tag_viewed(tag: str, con: asyncpg.Connection = Depends(leaky_connection)) -> dict[str, int]:
    return {"views": await repo.tagged_count(con, tag)}


search = APIRouter(prefix="/search", tags=["search"])


@search.get("/fresh-pool")
async def fresh_pool() -> dict[str, int]:
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=2)  # mark: pool-per-request
    try:
        return {"articles": await repo.article_count(pool)}
    finally:
        await pool.close()


@search.get("/fresh-connection")
async def fresh_connection() -> dict[str, int]:
    con = await asyncpg.connect(DSN)  # mark: connect-per-request
    try:
        return {"articles": await repo.article_count(con)}
    finally:
        await con.close()


@search.get("/fresh-database")
async def fresh_database() -> dict[str, int]:
    database = databases.Database(DSN)
    await database.connect()  # mark: databases-per-request
    try:
        return {"articles": await database.fetch_val("SELECT count(*) FROM articles")}
    finally:
        await database.disconnect()


@search.get("/shared")
async def shared(request: Request, pool: asyncpg.Pool = Depends(get_pool)) -> dict[str, int]:
    database = request.app.state.database
    return {"articles": await repo.article_count(pool),
            "again": await database.fetch_val("SELECT count(*) FROM articles")}


@search.get("/lazy")
async def lazy() -> dict[str, int]:
    """A pool made on the first request and kept: done once, not per request."""
    global lazy_pool
    if lazy_pool is None:
        lazy_pool = await asyncpg.create_pool(DSN, min_size=1, max_size=2)
    return {"articles": await repo.article_count(lazy_pool)}


api = APIRouter(prefix="/api")
for router in (auth, articles, reports, tags, search):
    api.include_router(router)

app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["https://app.example.com"], allow_methods=["*"],
                   allow_headers=["Authorization"])
app.include_router(api)


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/pool")
async def pool_state(request: Request) -> dict[str, Any]:
    """The two pools of the database (the app's and the one under `databases`), added up; asyncpg's version."""
    pools = [request.app.state.pool, request.app.state.database._backend._pool]
    return {"size": sum(p.get_size() for p in pools), "idle": sum(p.get_idle_size() for p in pools),
            "max": sum(p.get_max_size() for p in pools), "asyncpg": asyncpg.__version__}
