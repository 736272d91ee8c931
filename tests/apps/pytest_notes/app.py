"""A notes API whose suite uses ``TestClient(app)`` without ``with`` (tests/test_pytest_plugin.py).

Many suites do (FastAPI's tutorial does): no lifespan runs, and each request starts a fresh event loop
in the TestClient's portal thread, which is closed when the request returns. Shaped like a real app:
the engine and sessionmaker built at import (as the full-stack template does), routers with prefixes
and dependencies, CORS, a bearer token decoded to a user loaded from the database, password hashing,
sync ``def`` endpoints on a SQLAlchemy ``Session``. Each sick route has a healthy twin under ``/v2``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Header, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from pydantic_settings import BaseSettings
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

SALT = b"notes-salt"
HASH_ITERATIONS = 1_000_000  # about 0.4-1 s of CPU on a busy machine: a realistic password hash (bcrypt 12 rounds)

class Settings(BaseSettings):
    token_prefix: str = "user-"
    access_token_expire_minutes: int = 60 * 24


@lru_cache
def get_settings() -> Settings:
    """Read once and cached (the suite clears the cache between tests, as many suites do)."""
    return Settings()


engine = create_engine(os.environ["NOTES_DATABASE_URL"], connect_args={"check_same_thread": False})
SessionLocal = sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(128))


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    text: Mapped[str] = mapped_column(String(500))


def hash_password(password: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, HASH_ITERATIONS).hex()


def verify_password(password: str, hashed: str) -> bool:
    return hmac.compare_digest(hash_password(password), hashed)


def init_db() -> None:
    """Run by the suite's fixture (the app has no lifespan)."""
    Base.metadata.create_all(engine)
    with SessionLocal() as session:
        if session.scalar(select(User).limit(1)) is None:
            session.add(User(id=1, email="ann@example.com", password_hash=hash_password("secret")))
            session.add_all(Note(owner_id=1, text=f"note {n}") for n in range(3))
            session.commit()


def get_db() -> Iterator[Session]:
    with SessionLocal() as session:
        yield session


def current_user(authorization: str = Header(), db: Session = Depends(get_db)) -> User:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith("user-"):
        raise HTTPException(401)
    user = db.get(User, int(token.removeprefix("user-")))
    if user is None:
        raise HTTPException(401)
    return user


login = APIRouter(prefix="/login", tags=["login"])


def _user_by_email(email: str) -> User | None:
    with SessionLocal() as db:
        return db.scalar(select(User).where(User.email == email))


SettingsDep = Annotated[Settings, Depends(get_settings)]


@login.post("/access-token")
async def access_token(email: str, password: str, settings: SettingsDep) -> dict[str, str]:
    user = await run_in_threadpool(_user_by_email, email)
    if user is None or not verify_password(password, user.password_hash):  # CPU-bound, on the event loop
        raise HTTPException(400, "Incorrect email or password")
    return {"access_token": f"{settings.token_prefix}{user.id}", "token_type": "bearer"}


@login.post("/v2/access-token")
async def access_token_v2(email: str, password: str, settings: SettingsDep) -> dict[str, str]:
    user = await run_in_threadpool(_user_by_email, email)
    if user is None or not await run_in_threadpool(verify_password, password, user.password_hash):
        raise HTTPException(400, "Incorrect email or password")
    return {"access_token": f"{settings.token_prefix}{user.id}", "token_type": "bearer"}


notes = APIRouter(prefix="/notes", tags=["notes"], dependencies=[Depends(current_user)])

delivered: list[int] = []


async def notify_followers(note_id: int) -> None:
    await asyncio.sleep(30)  # waits for the next digest: the task outlives the request by far
    delivered.append(note_id)


async def notify_followers_now(note_id: int) -> None:
    delivered.append(note_id)


@notes.post("/{note_id}/share")
async def share(note_id: int) -> dict[str, Any]:
    asyncio.create_task(notify_followers(note_id))  # fire and forget: nothing awaits or keeps it
    return {"shared": note_id}


@notes.post("/v2/{note_id}/share")
async def share_v2(note_id: int, background: BackgroundTasks) -> dict[str, Any]:
    background.add_task(notify_followers_now, note_id)  # runs after the response, within the request
    return {"shared": note_id}


@notes.get("/")
def list_notes(user: User = Depends(current_user), db: Session = Depends(get_db)) -> list[dict[str, Any]]:
    return [{"id": n.id, "text": n.text} for n in db.scalars(select(Note).where(Note.owner_id == user.id))]


app = FastAPI()
app.add_middleware(CORSMiddleware, allow_origins=["https://notes.example"], allow_methods=["*"], allow_headers=["*"])
app.include_router(login)
app.include_router(notes)
