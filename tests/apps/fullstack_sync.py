"""A sync FastAPI service shaped like the full-stack FastAPI template: routers with prefixes, CORS,
an OAuth2 bearer dependency that decodes a signed token and loads the user by primary key, ``def``
endpoints on SQLAlchemy sessions (SQLModel-style ``SessionDep``), tables and users made in the
lifespan. ``MISTAKE`` puts one realistic mistake in; lines the tests look for carry ``# mark:``.

Environment: DB_URL (sqlite:///file or postgresql+psycopg://), POOL_SIZE, MAX_OVERFLOW,
POOL_TIMEOUT, UPSTREAM_URL (a slow service the ``slow_upstream`` mistake calls), MISTAKE,
PASSWORD_HASHER (pbkdf2, or argon2 as the template does).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Annotated, Any

import requests
from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from fullstack_security import SECRET_KEY, create_access_token, decode_access_token, hash_password, verify_password
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import ForeignKey, String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MISTAKE = os.environ.get("MISTAKE", "none")
DB_URL = os.environ["DB_URL"]
UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_", env_file=os.environ.get("ENV_FILE"), extra="ignore")

    project_name: str = "fullstack"
    items_per_page: int = 20


def engine_options() -> dict[str, Any]:
    return {
        "pool_size": int(os.environ.get("POOL_SIZE", "5")),
        "max_overflow": int(os.environ.get("MAX_OVERFLOW", "10")),
        "pool_timeout": float(os.environ.get("POOL_TIMEOUT", "30")),
        **({"connect_args": {"check_same_thread": False}} if DB_URL.startswith("sqlite") else {}),
    }


engine = create_engine(DB_URL, **engine_options())
settings = Settings()


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    hashed_password: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


@asynccontextmanager
async def lifespan(_app: FastAPI) -> Any:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for n in range(1, 4):
            user = User(email=f"user{n}@example.com", hashed_password=hash_password("secret"))
            session.add(user)
            session.flush()
            session.add_all([Item(title=f"item {n}.{i}", owner_id=user.id) for i in range(5)])
        session.commit()
    yield
    engine.dispose()


# -- deps.py ---------------------------------------------------------------------------------------

reusable_oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/login/access-token")


def get_db() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def get_db_unclosed() -> Session:
    return Session(engine)  # the session_leak mistake: never closed


def get_db_engine_per_request() -> Iterator[Session]:
    per_request = create_engine(DB_URL, **engine_options())  # mark: engine per request
    with Session(per_request) as session:
        yield session
    per_request.dispose()


def get_db_sessionmaker_per_request() -> Iterator[Session]:
    factory = sessionmaker(bind=engine)  # mark: sessionmaker per request
    with factory() as session:
        yield session


# The global_session mistake: one session for the whole process, never closed.
global_session = Session(engine)  # mark: global session


def get_global_session() -> Session:
    return global_session


def derive_signing_key() -> bytes:
    """The key that signs download links, stretched from the secret (hundreds of thousands of rounds)."""
    return hashlib.pbkdf2_hmac("sha256", SECRET_KEY, b"download-links", 200_000)


@lru_cache
def get_signing_key() -> bytes:
    return derive_signing_key()


def get_signing_key_per_request() -> bytes:  # mark: signing key per request
    return derive_signing_key()


def get_settings() -> Settings:
    return settings


def get_settings_per_request() -> Settings:
    return Settings()  # mark: settings per request


def get_http() -> requests.Session:
    return shared_http


def get_http_per_request() -> Iterator[requests.Session]:
    with requests.Session() as http:  # mark: requests session per request
        yield http


shared_http = requests.Session()

SessionDep = Annotated[
    Session,
    Depends({"engine_per_request": get_db_engine_per_request,
             "sessionmaker_per_request": get_db_sessionmaker_per_request,
             "global_session": get_global_session,
             "session_leak": get_db_unclosed}.get(MISTAKE, get_db)),
]
SettingsDep = Annotated[Settings, Depends(get_settings_per_request if MISTAKE == "settings_per_request" else get_settings)]
HttpDep = Annotated[requests.Session, Depends(get_http_per_request if MISTAKE == "client_per_request" else get_http)]
TokenDep = Annotated[str, Depends(reusable_oauth2)]
SigningKeyDep = Annotated[
    bytes, Depends(get_signing_key_per_request if MISTAKE == "signing_key_per_request" else get_signing_key)
]


def get_current_user(session: SessionDep, token: TokenDep) -> User:
    user_id = decode_access_token(token)
    if user_id is None:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="Could not validate credentials")
    user = session.get(User, user_id)  # mark: load user
    if user is None or not user.is_active:
        raise HTTPException(status_code=404, detail="User not found")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]

# -- routes ----------------------------------------------------------------------------------------

login_router = APIRouter(tags=["login"])


@login_router.post("/login/access-token")
def login_access_token(session: SessionDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> dict[str, str]:
    user = session.scalar(select(User).where(User.email == form.username))  # mark: login query
    if user is None or not verify_password(form.password, user.hashed_password):
        raise HTTPException(status_code=400, detail="Incorrect email or password")
    return {"access_token": create_access_token(user.id), "token_type": "bearer"}


if MISTAKE == "async_login":
    # The login route made `async def`: the session's query and the password's hash run on the event loop.
    login_router.routes.clear()

    @login_router.post("/login/access-token")
    async def login_access_token_async(
        session: SessionDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]
    ) -> dict[str, str]:
        user = session.scalar(select(User).where(User.email == form.username))  # mark: async login query
        if user is None or not verify_password(form.password, user.hashed_password):  # mark: async login verify
            raise HTTPException(status_code=400, detail="Incorrect email or password")
        return {"access_token": create_access_token(user.id), "token_type": "bearer"}


users_router = APIRouter(prefix="/users", tags=["users"])


@users_router.get("/me")
def read_user_me(current_user: CurrentUser) -> dict[str, Any]:
    return {"id": current_user.id, "email": current_user.email}


items_router = APIRouter(prefix="/items", tags=["items"])


@items_router.get("/")
def read_items(
    session: SessionDep, current_user: CurrentUser, settings: SettingsDep, http: HttpDep, signing_key: SigningKeyDep
) -> dict[str, Any]:
    if MISTAKE == "slow_upstream":
        http.get(UPSTREAM_URL, timeout=30)  # mark: slow upstream
    rows = session.scalars(
        select(Item).where(Item.owner_id == current_user.id).limit(settings.items_per_page)
    ).all()
    links = [hmac.new(signing_key, f"/download/{item.id}".encode(), "sha256").hexdigest()[:16] for item in rows]
    return {"data": [{"id": item.id, "title": item.title, "link": link} for item, link in zip(rows, links)],
            "count": len(rows)}


class ItemCreate(BaseModel):
    title: str


@items_router.post("/")
def create_item(session: SessionDep, current_user: CurrentUser, item_in: ItemCreate) -> dict[str, Any]:
    item = Item(title=item_in.title, owner_id=current_user.id)
    session.add(item)
    session.commit()
    session.refresh(item)  # mark: refresh item
    return {"id": item.id, "title": item.title}


# A report the database takes tens of milliseconds to compute (the connection is busy meanwhile).
SUMMARY = (
    "SELECT count(*) FROM generate_series(1, 400000)"
    if DB_URL.startswith("postgresql")
    else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000) SELECT count(*) FROM c"
)


@items_router.get("/summary")
def items_summary(session: SessionDep, current_user: CurrentUser) -> dict[str, Any]:
    rows = session.execute(text(SUMMARY)).scalar_one()  # mark: summary query
    return {"owner": current_user.id, "rows": rows}


utils_router = APIRouter(prefix="/utils", tags=["utils"])


@utils_router.get("/health-check/")
async def health_check() -> bool:  # as the template's: answered on the loop
    return True


api_router = APIRouter()
api_router.include_router(login_router)
api_router.include_router(users_router)
api_router.include_router(items_router)
api_router.include_router(utils_router)

app = FastAPI(title=settings.project_name, lifespan=lifespan)
app.add_middleware(
    CORSMiddleware,
    allow_origins=["http://localhost:5173"],
    allow_credentials=True,
    allow_methods=["*"],
    allow_headers=["*"],
)
app.include_router(api_router, prefix="/api/v1")


@app.get("/")
def root() -> dict[str, str]:
    return {"status": "ok"}
