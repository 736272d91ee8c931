"""A shop API tested by its own suite under ``pytest --doctor`` (tests/test_pytest_plugin.py).

Shaped like a real app: routers with prefixes and dependencies, CORS, a bearer-token dependency that
loads the user, password hashing, sync ``def`` endpoints on a SQLAlchemy ``Session`` (SQLite), and
the expensive objects built once in the lifespan. Each sick route has a healthy twin under ``/v2``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker

SALT = b"shop-salt"
HASH_ITERATIONS = 400_000  # about 0.2-0.4 s of CPU: a realistic password hash


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    password_hash: Mapped[str] = mapped_column(String(128))
    orders: Mapped[list[Order]] = relationship(back_populates="user", order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    total_cents: Mapped[int]
    user: Mapped[User] = relationship(back_populates="orders")


def hash_password(password: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, HASH_ITERATIONS).hex()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_engine(os.environ["SHOP_DATABASE_URL"])
    Base.metadata.create_all(engine)
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    with app.state.sessions() as session:
        if session.scalar(select(User).limit(1)) is None:
            pw = hash_password("secret")
            for u in range(1, 4):
                session.add(User(id=u, name=f"user{u}", password_hash=pw,
                                 orders=[Order(total_cents=100 * k) for k in range(1, 13)]))
            session.commit()
    yield
    engine.dispose()


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def current_user(authorization: str = Header(), session: Session = Depends(get_session)) -> User:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith("user-"):
        raise HTTPException(401)
    user = session.get(User, int(token.removeprefix("user-")))
    if user is None:
        raise HTTPException(401)
    return user


auth = APIRouter(prefix="/auth", tags=["auth"])


@auth.post("/login")
async def login(name: str, password: str, request: Request) -> dict[str, str]:
    expected = hash_password("secret")  # CPU-bound hashing on the event loop
    if hash_password(password) != expected:
        raise HTTPException(401)
    return {"token": f"user-{name.removeprefix('user')}"}


@auth.post("/v2/login")
async def login_v2(name: str, password: str) -> dict[str, str]:
    candidate = await run_in_threadpool(hash_password, password)  # the same work, off the loop
    if candidate != await run_in_threadpool(hash_password, "secret"):
        raise HTTPException(401)
    return {"token": f"user-{name.removeprefix('user')}"}


orders = APIRouter(prefix="/me", tags=["orders"], dependencies=[Depends(current_user)])


@orders.get("/orders")
def my_orders(user: User = Depends(current_user), session: Session = Depends(get_session)) -> list[dict[str, Any]]:
    rows = session.scalars(select(Order.id).where(Order.user_id == user.id)).all()
    return [{"id": oid, "total": session.get(Order, oid, populate_existing=True).total_cents} for oid in rows]


@orders.get("/v2/orders")
def my_orders_v2(user: User = Depends(current_user), session: Session = Depends(get_session)) -> list[dict[str, Any]]:
    found = session.scalars(select(User).options(selectinload(User.orders)).where(User.id == user.id)).one()
    return [{"id": o.id, "total": o.total_cents} for o in found.orders]


_parked: list[Session] = []


@orders.get("/summary")
def summary(request: Request, user: User = Depends(current_user)) -> dict[str, int]:
    session = request.app.state.sessions()  # kept "for the next call": its connection stays out
    _parked.append(session)
    return {"orders": len(session.scalars(select(Order).where(Order.user_id == user.id)).all())}


@orders.get("/v2/summary")
def summary_v2(user: User = Depends(current_user), session: Session = Depends(get_session)) -> dict[str, int]:
    return {"orders": len(session.scalars(select(Order).where(Order.user_id == user.id)).all())}


misc = APIRouter(prefix="/misc")


@misc.get("/pause")
async def pause() -> dict[str, str]:
    try:
        time.sleep(0.01)  # blocking on the loop; blockbuster alone would raise here and the app would answer "fallback"
        return {"result": "slept"}
    except Exception:
        return {"result": "fallback"}


app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["https://shop.example"], allow_methods=["*"], allow_headers=["*"])
app.include_router(auth)
app.include_router(orders)
app.include_router(misc)
