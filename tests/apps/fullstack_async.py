"""An async FastAPI service: async SQLAlchemy sessions (``async_sessionmaker``) on aiosqlite or
asyncpg, routers with prefixes, CORS, an OAuth2 bearer dependency that decodes a signed token and
loads the user by primary key. ``MISTAKE`` puts one realistic mistake in; lines the tests look for
carry ``# mark:``.

Environment: DB_URL (sqlite+aiosqlite:///file or postgresql+asyncpg://), POOL_SIZE, MAX_OVERFLOW,
POOL_TIMEOUT, MISTAKE.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import OAuth2PasswordBearer
from fullstack_security import create_access_token, decode_access_token, hash_password, verify_password
from pydantic import BaseModel
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MISTAKE = os.environ.get("MISTAKE", "none")
DB_URL = os.environ["DB_URL"]


def engine_options() -> dict[str, Any]:
    return {
        "pool_size": int(os.environ.get("POOL_SIZE", "5")),
        "max_overflow": int(os.environ.get("MAX_OVERFLOW", "10")),
        "pool_timeout": float(os.environ.get("POOL_TIMEOUT", "30")),
    }


engine = create_async_engine(DB_URL, **engine_options())
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)
http_client: httpx.AsyncClient | None = None


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    hashed_password: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True)


class Article(Base):
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global http_client
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    async with SessionLocal() as session:
        for n in range(1, 4):
            user = User(email=f"user{n}@example.com", hashed_password=hash_password("secret"))
            session.add(user)
            await session.flush()
            session.add_all([Article(title=f"article {n}.{i}", author_id=user.id) for i in range(5)])
        await session.commit()
    http_client = httpx.AsyncClient()
    yield
    await http_client.aclose()
    await engine.dispose()


# -- dependencies ----------------------------------------------------------------------------------

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/auth/token")


async def get_session() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as session:
        yield session


async def get_session_engine_per_request() -> AsyncIterator[AsyncSession]:
    per_request = create_async_engine(DB_URL, **engine_options())  # mark: engine per request
    async with AsyncSession(per_request) as session:
        yield session
    await per_request.dispose()


async def get_http() -> httpx.AsyncClient:
    assert http_client is not None
    return http_client


async def get_http_per_request() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:  # mark: client per request
        yield client


SessionDep = Annotated[
    AsyncSession, Depends(get_session_engine_per_request if MISTAKE == "engine_per_request" else get_session)
]
HttpDep = Annotated[httpx.AsyncClient, Depends(get_http_per_request if MISTAKE == "client_per_request" else get_http)]


async def get_current_user(session: SessionDep, token: Annotated[str, Depends(oauth2_scheme)]) -> User:
    user_id = decode_access_token(token)
    if user_id is None:
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Invalid token")
    user = await session.get(User, user_id)  # mark: load user
    if user is None or not user.is_active:
        raise HTTPException(status_code=404, detail="User not found")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]

# -- routers ---------------------------------------------------------------------------------------


class Credentials(BaseModel):
    email: str
    password: str


auth_router = APIRouter(prefix="/auth", tags=["auth"])


@auth_router.post("/token")
async def login(credentials: Credentials, session: SessionDep) -> dict[str, str]:
    user = await session.scalar(select(User).where(User.email == credentials.email))
    if user is None or not verify_password(credentials.password, user.hashed_password):
        raise HTTPException(status_code=400, detail="Incorrect email or password")
    return {"access_token": create_access_token(user.id), "token_type": "bearer"}


users_router = APIRouter(prefix="/users", tags=["users"])


@users_router.get("/me")
async def read_me(user: CurrentUser) -> dict[str, Any]:
    return {"id": user.id, "email": user.email}


articles_router = APIRouter(prefix="/articles", tags=["articles"])


@articles_router.get("")
async def list_articles(session: SessionDep, user: CurrentUser, http: HttpDep) -> dict[str, Any]:
    rows = (await session.scalars(select(Article).where(Article.author_id == user.id).limit(20))).all()
    return {"articles": [{"id": a.id, "title": a.title} for a in rows], "client_open": not http.is_closed}


api = APIRouter(prefix="/api")
api.include_router(auth_router)
api.include_router(users_router)
api.include_router(articles_router)

app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
app.include_router(api)


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}
