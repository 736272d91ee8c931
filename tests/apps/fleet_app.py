"""A library service run as a fleet (several workers, several replicas): routers with prefixes, CORS,
a bearer dependency that decodes a signed token and loads the user, ``def`` endpoints on SQLAlchemy
sessions, tables and a hashed-password user made in the lifespan. Two mistakes the fleet tests
look for: an N+1 loop (``/api/authors/``, ``/api/shelves/``, ``/api/genres/``) and a blocking call
in an ``async def`` route (``/api/reports/daily``). Lines the tests look for carry ``# mark:``.

Environment: DB_URL (default: a SQLite file per process in TMPDIR).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import OAuth2PasswordBearer
from fullstack_security import create_access_token, decode_access_token, hash_password
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

DB_URL = os.environ.get("DB_URL") or f"sqlite:///{tempfile.gettempdir()}/fleet-{os.getpid()}-{time.time_ns()}.db"
engine = create_engine(DB_URL, connect_args={"check_same_thread": False} if DB_URL.startswith("sqlite") else {})
TOKEN = create_access_token(1)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    hashed_password: Mapped[str] = mapped_column(String(255))


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))


@asynccontextmanager
async def lifespan(_app: FastAPI) -> Any:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(User(id=1, email="librarian@example.com", hashed_password=hash_password("secret")))
        for n in range(12):
            author = Author(name=f"author {n}")
            session.add(author)
            session.flush()
            session.add_all([Book(title=f"book {n}.{i}", author_id=author.id) for i in range(2)])
        session.commit()
    yield
    engine.dispose()


def get_db() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
reusable_oauth2 = OAuth2PasswordBearer(tokenUrl="/api/login")


def get_current_user(session: SessionDep, token: Annotated[str, Depends(reusable_oauth2)]) -> User:
    user_id = decode_access_token(token)
    if user_id is None:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="Could not validate credentials")
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]

catalog = APIRouter(prefix="/authors", tags=["catalog"])


@catalog.get("/")
def list_authors(session: SessionDep, user: CurrentUser) -> list[dict[str, Any]]:
    out = []
    for author in session.scalars(select(Author)).all():
        books = session.scalars(select(Book).where(Book.author_id == author.id)).all()  # mark: n+1 authors
        out.append({"name": author.name, "books": [b.title for b in books]})
    return out


shelves = APIRouter(prefix="/shelves", tags=["catalog"])


@shelves.get("/")
def list_shelves(session: SessionDep, user: CurrentUser) -> list[int]:
    return [
        len(session.scalars(select(Book.id).where(Book.author_id == a)).all())  # mark: n+1 shelves
        for a in session.scalars(select(Author.id)).all()
    ]


genres = APIRouter(prefix="/genres", tags=["catalog"])


@genres.get("/")
def list_genres(session: SessionDep, user: CurrentUser) -> list[str]:
    names = []
    for author in session.scalars(select(Author)).all():
        names.append(session.scalars(select(Author.name).where(Author.id == author.id)).one())  # mark: n+1 genres
    return names


reports = APIRouter(prefix="/reports", tags=["reports"])


@reports.get("/daily")
async def daily_report(user: CurrentUser) -> dict[str, int]:
    time.sleep(0.3)  # mark: blocking report
    return {"pid": os.getpid()}


api = APIRouter()
api.include_router(catalog)
api.include_router(shelves)
api.include_router(genres)
api.include_router(reports)

app = FastAPI(title="library", lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["https://library.example.com"], allow_methods=["*"],
                   allow_headers=["*"], allow_credentials=True)
app.include_router(api, prefix="/api")


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "pid": os.getpid()}
