"""An inventory service with many routes, for the series budget: ``MANY_ROUTES`` GET routes (200 by
default) on 20 resource routers included under ``/api/v1``, each router behind a bearer dependency that
decodes a signed token and loads the user; ``def`` endpoints on a SQLAlchemy session with a pagination
dependency (each runs one query); CORS and gzip middlewares; tables and a hashed-password user made
in the lifespan. One path per route:
``/api/v1/kind{k}/7/view{n}``.

Environment: MANY_ROUTES; DB_URL (default: a SQLite file per process in TMPDIR).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.security import OAuth2PasswordBearer
from fullstack_security import decode_access_token, hash_password
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROUTES = int(os.environ.get("MANY_ROUTES", "200"))
RESOURCES = 20
DB_URL = os.environ.get("DB_URL") or f"sqlite:///{tempfile.gettempdir()}/many-{os.getpid()}-{time.time_ns()}.db"
engine = create_engine(DB_URL, connect_args={"check_same_thread": False} if DB_URL.startswith("sqlite") else {})


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    hashed_password: Mapped[str] = mapped_column(String(255))


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(100))


@asynccontextmanager
async def lifespan(_app: FastAPI) -> Any:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(User(id=1, email="stock@example.com", hashed_password=hash_password("secret")))
        session.add_all([Item(kind=f"kind{k}", name=f"item {k}.{i}") for k in range(RESOURCES) for i in range(3)])
        session.commit()
    yield
    engine.dispose()


def get_db() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
reusable_oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/login")


def get_current_user(session: SessionDep, token: Annotated[str, Depends(reusable_oauth2)]) -> User:
    user_id = decode_access_token(token)
    if user_id is None:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="Could not validate credentials")
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


def pagination(limit: Annotated[int, Query(le=100)] = 20, offset: int = 0) -> tuple[int, int]:
    return limit, offset


Page = Annotated[tuple[int, int], Depends(pagination)]


def resource_router(kind: str, routes: int) -> APIRouter:
    router = APIRouter(prefix=f"/{kind}", tags=[kind], dependencies=[Depends(get_current_user)])
    for n in range(routes):

        def view(session: SessionDep, page: Page, item_id: int = 0) -> dict[str, Any]:
            names = session.scalars(select(Item.name).where(Item.kind == kind).limit(page[0]).offset(page[1])).all()
            return {"kind": kind, "item": item_id, "names": names}

        router.add_api_route(f"/{{item_id}}/view{n}", view, methods=["GET"], name=f"{kind}_view{n}")
    return router


def kinds() -> list[str]:
    return [f"kind{k}" for k in range(min(RESOURCES, ROUTES))]


api = APIRouter(prefix="/api/v1")
for _kind in kinds():
    api.include_router(resource_router(_kind, max(1, ROUTES // RESOURCES)))

app = FastAPI(title="inventory", lifespan=lifespan)
app.add_middleware(GZipMiddleware, minimum_size=500)
app.add_middleware(CORSMiddleware, allow_origins=["https://inventory.example.com"], allow_methods=["*"],
                   allow_headers=["*"], allow_credentials=True)
app.include_router(api)


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "pid": os.getpid()}
