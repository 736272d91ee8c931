"""A shop API laid out like real ones: routers in their own sections with prefixes and an auth
dependency (a signed token decoded, the user loaded), CORS, a request-timing middleware that adds
``X-Process-Time``, and an audit middleware that writes a record for order requests only.

Its pathologies are narrow on purpose: only ``GET /items/`` is large (``POST /items/`` on the same
path answers a few bytes), and only the ``/orders`` routes pay the audit write. Lines the tests look
for carry a ``# mark:`` comment.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.middleware.base import BaseHTTPMiddleware

SECRET = b"test-signing-key"
USERS: dict[str, dict[str, Any]] = {}


def hash_password(password: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 50_000).hex()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # Start-up work, once: the users table with hashed passwords.
    USERS["ada"] = {"name": "ada", "password": hash_password("lovelace", b"salt"), "role": "admin"}
    yield
    USERS.clear()


def make_token(user: str) -> str:
    body = base64.urlsafe_b64encode(json.dumps({"sub": user}).encode()).decode()
    signature = hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{signature}"


TOKEN = make_token("ada")
bearer = HTTPBearer()


async def current_user(credentials: HTTPAuthorizationCredentials = Depends(bearer)) -> dict[str, Any]:
    body, _, signature = credentials.credentials.partition(".")
    expected = hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        raise HTTPException(status_code=401, detail="bad token")
    user = USERS.get(json.loads(base64.urlsafe_b64decode(body))["sub"])
    if user is None:
        raise HTTPException(status_code=401, detail="unknown user")
    return user


# -- items --------------------------------------------------------------------------------------

# The catalogue, rendered once (a cached listing): about 600 KB of JSON, every item with every field.
CATALOGUE = json.dumps(
    [{"id": i, "name": f"item {i}", "price": i * 1.25, "description": "d" * 40} for i in range(7000)]
).encode()


class NewItem(BaseModel):
    name: str
    price: float


items = APIRouter(prefix="/items", tags=["items"], dependencies=[Depends(current_user)])


@items.get("/")
async def list_items() -> Response:  # mark: large listing
    return Response(CATALOGUE, media_type="application/json")


@items.post("/", status_code=201)
async def create_item(item: NewItem) -> dict[str, Any]:  # mark: create item
    return {"id": 7001, "name": item.name}


@items.get("/{item_id}")
async def get_item(item_id: int) -> dict[str, Any]:
    return {"id": item_id, "name": f"item {item_id}"}


# -- orders -------------------------------------------------------------------------------------

orders = APIRouter(prefix="/orders", tags=["orders"], dependencies=[Depends(current_user)])


@orders.get("/")
async def list_orders() -> list[dict[str, Any]]:
    return [{"id": 1, "total": 12.5}]


@orders.get("/{order_id}")
async def get_order(order_id: int) -> dict[str, Any]:
    return {"id": order_id, "total": 12.5}


# -- the app ------------------------------------------------------------------------------------

app = FastAPI(lifespan=lifespan)


class AuditMiddleware(BaseHTTPMiddleware):
    """Order requests are audited: a record is written to a remote store before they go on."""

    async def dispatch(self, request: Request, call_next: Any) -> Any:  # mark: audit
        if request.url.path.startswith("/orders"):
            await asyncio.sleep(0.04)  # the audit store's round trip
        return await call_next(request)


app.add_middleware(AuditMiddleware)


@app.middleware("http")
async def add_process_time_header(request: Request, call_next: Any) -> Any:  # mark: process time
    start = time.perf_counter()
    response = await call_next(request)
    response.headers["X-Process-Time"] = str(time.perf_counter() - start)
    return response


app.add_middleware(CORSMiddleware, allow_origins=["https://shop.example.com"], allow_methods=["*"],
                   allow_headers=["*"])
app.include_router(items)
app.include_router(orders)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
