"""Run as a script (argument: a SQLite file): note what the agent may change in the process — the
classes and modules of FastAPI, Starlette, SQLAlchemy, asyncpg, httpx and logging, SQLAlchemy's event
listeners, every logger's level, handlers and filters, ``gc.callbacks``, the app's dependencies —
then instrument the app in code with every detector, profiling and an OTLP endpoint, serve requests
in-process (real ASGI through httpx), uninstrument, and print what differs from before, during and
after (JSON)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Annotated, Any

import asyncpg  # the asyncpg signal wraps its classes once it is imported
import asyncpg.connection
import asyncpg.pool
import asyncpg.prepared_stmt
import fastapi.applications
import fastapi.dependencies.utils
import fastapi.routing
import httpx
import sqlalchemy.engine
import sqlalchemy.engine.default
import sqlalchemy.pool
import starlette.applications
import starlette.responses
import starlette.routing
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from sqlalchemy import Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DB_PATH = sys.argv[1]
SECRET = b"undo-test-signing-key"
engine = create_engine(f"sqlite:///{DB_PATH}", connect_args={"check_same_thread": False})
SessionLocal = sessionmaker(engine)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    password_hash: Mapped[str] = mapped_column(String(200))


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(100))


def hash_password(password: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"salt", 1000).hex()


def token_for(user_id: int) -> str:
    return f"{user_id}.{hmac.new(SECRET, str(user_id).encode(), 'sha256').hexdigest()}"


def get_session() -> Iterator[Session]:
    with SessionLocal() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_user(session: SessionDep, authorization: Annotated[str, Header()] = "") -> User:
    user_id, _, signature = authorization.removeprefix("Bearer ").partition(".")
    if not user_id.isdigit() or not hmac.compare_digest(signature, token_for(int(user_id)).partition(".")[2]):
        raise HTTPException(status_code=401, detail="bad token")
    user = session.get(User, int(user_id))
    if user is None:
        raise HTTPException(status_code=401, detail="no such user")
    return user


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    Base.metadata.create_all(engine)
    with SessionLocal() as session:
        if session.get(User, 1) is None:
            session.add(User(id=1, email="a@example.com", password_hash=hash_password("secret")))
            session.add_all([Item(owner_id=1, title=f"item {n}") for n in range(50)])
            session.commit()
    yield


items = APIRouter(prefix="/items", tags=["items"], dependencies=[Depends(current_user)])


@items.get("/")
def list_items(session: SessionDep, user: Annotated[User, Depends(current_user)]) -> list[dict[str, Any]]:
    rows = session.scalars(select(Item).where(Item.owner_id == user.id)).all()
    return [{"id": row.id, "title": row.title} for row in rows]


@items.get("/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["https://app.example.com"], allow_headers=["*"])
app.add_middleware(GZipMiddleware, minimum_size=500)
app.include_router(items, prefix="/api/v1")


# -- what the agent may change, as the app sees it -------------------------------------------------


def _subclasses(base: type) -> list[type]:
    found, pending = [], [base]
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found


NAMESPACES: list[Any] = [
    fastapi.applications.FastAPI, starlette.applications.Starlette, starlette.routing.Route,
    starlette.responses.JSONResponse, fastapi.routing, fastapi.dependencies.utils,
    *_subclasses(sqlalchemy.pool.Pool), *_subclasses(sqlalchemy.engine.Dialect), sqlalchemy.engine.Engine, Session,
    asyncpg, asyncpg.connection.Connection, asyncpg.pool.Pool, asyncpg.pool.PoolConnectionHolder,
    asyncpg.prepared_stmt.PreparedStatement, httpx.Client, httpx.AsyncClient,
    logging.Logger, logging.LogRecord,
]
EVENTS = {"pool": ("connect", "checkout", "checkin", "detach"), "engine": ("before_cursor_execute", "after_cursor_execute")}


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


def snapshot() -> dict[str, Any]:
    """Everything compared, by identity: name -> object (or a list of objects)."""
    state: dict[str, Any] = {}
    for namespace in NAMESPACES:
        prefix = namespace.__name__ if isinstance(namespace, ModuleType) else _name(namespace)
        for key, value in list(vars(namespace).items()):
            if not isinstance(value, ModuleType):  # a submodule imported since is not a change
                state[f"{prefix}.{key}"] = value
    probe = create_engine(f"sqlite:///{DB_PATH}")  # a new engine: every class-level listener applies to it
    # By name: create_engine adds listeners of its own to each engine, new functions every time.
    for ev in EVENTS["pool"]:
        state[f"listeners pool.{ev}"] = [_name(fn) for fn in getattr(probe.pool.dispatch, ev)]
    for ev in EVENTS["engine"]:
        state[f"listeners engine.{ev}"] = [_name(fn) for fn in getattr(probe.dispatch, ev)]
    with Session(probe) as session:
        state["listeners session.after_begin"] = [_name(fn) for fn in session.dispatch.after_begin]
    probe.dispose()
    loggers = {"<root>": logging.getLogger(), **logging.root.manager.loggerDict}
    for name, logger in loggers.items():
        if isinstance(logger, logging.Logger):
            state[f"logger {name}"] = (logger.level, logger.disabled, list(logger.handlers), list(logger.filters))
    state["gc.callbacks"] = list(gc.callbacks)
    state["app dependencies"] = dependency_calls()
    return state


def dependency_calls() -> list[Any]:
    """The callables of every route's dependencies, as FastAPI calls them (from 0.137 an included route
    is served through its effective copy: the dependant of FastAPI's iter_route_contexts)."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = contexts(app.router.routes) if contexts else app.router.routes
    calls = []
    for route in routes:
        pending = list(getattr(getattr(route, "dependant", None), "dependencies", []))
        while pending:
            dependant = pending.pop()
            calls.append(dependant.call)
            pending.extend(dependant.dependencies)
    return calls


def _the_agents(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "fastapi_doctor"


def changed(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(before.keys() | now.keys()):
        old, new = before.get(key), now.get(key)
        if key.startswith("logger ") and old is None:
            # A logger created since: by the agent, or by a library the agent imported (grpc adds its
            # NullHandler, the SDK its DuplicateFilter). A level, or a handler or filter of the agent's, is a change.
            level, _disabled, handlers, filters = new
            if level != logging.NOTSET or any(map(_the_agents, [*handlers, *filters])):
                out.append(key)
            continue
        if not _same(old, new):
            out.append(key)
    return out


def _same(old: Any, new: Any) -> bool:
    """By identity (a wrapper may compare equal to what it wraps), lists item by item, names and numbers
    by value."""
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(map(_same, old, new))
    if isinstance(old, (str, int)) and isinstance(new, (str, int)):
        return old == new
    return old is new


async def serve() -> list[int]:
    statuses = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async with app.router.lifespan_context(app):
            headers = {"authorization": f"Bearer {token_for(1)}", "accept-encoding": "gzip"}
            for _ in range(3):
                statuses.append((await client.get("/api/v1/items/", headers=headers)).status_code)
                statuses.append((await client.get("/api/v1/items/7", headers=headers)).status_code)
            statuses.append((await client.get("/api/v1/items/")).status_code)  # no token: 401
    return statuses


def main() -> None:
    import fastapi_doctor

    logging.getLogger("app").addHandler(logging.NullHandler())  # the app's own logging stays as it is
    before = snapshot()
    fastapi_doctor.instrument(
        app,
        prometheus_port=0,
        profiling=True,
        # An OTLP endpoint nobody listens on: the exporters are built (nothing is sent in this run).
        otlp_endpoint="http://127.0.0.1:9",
        metric_export_interval_ms=600_000,
        slow_query_ms=1,
    )
    statuses = asyncio.run(serve())
    with httpx.Client():
        pass
    during = snapshot()
    fastapi_doctor.uninstrument()
    after = snapshot()
    print(json.dumps({"statuses": statuses, "during": changed(before, during), "after": changed(before, after)}))


if __name__ == "__main__":
    main()
