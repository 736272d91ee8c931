"""An app whose start-up is heavy and whose first requests warm things up, shaped like a real service.

Work done once is not a recurring problem: importing a large API (hundreds of routes and their models,
``include_router``), the lifespan's start-up (seeding an admin with a password hash, loading a catalogue
synchronously), the first ``/openapi.json`` of that API and a route's lazy first-call set-up all block
the event loop once each. Only ``/orders/export``, which blocks on every call, is a finding.
"""

import base64
import hashlib
import os
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, create_model

import startup_helpers

USERS: dict[str, dict[str, str]] = {}
CATALOGUE: dict[str, Any] = {}


def hash_password(password: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 200_000).hex()


@asynccontextmanager
async def lifespan(app: FastAPI):
    salt = os.urandom(16)
    USERS["admin"] = {"name": "admin", "password": hash_password("admin", salt)}  # seeded at start-up
    CATALOGUE.update(startup_helpers.load_catalogue(0.3))  # STARTUP-LOAD
    yield
    CATALOGUE.clear()


def current_user(authorization: Annotated[str | None, Header()] = None) -> dict[str, str]:
    token = (authorization or "").removeprefix("Bearer ")
    try:
        name = base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        name = ""
    user = USERS.get(name)
    if user is None:
        raise HTTPException(status_code=401, detail="bad token")
    return user


# A large API, built at import: each resource has its models and five routes, in its own router.
def resource_router(name: str) -> APIRouter:
    fields: dict[str, Any] = {f"field_{i}": (str | None, None) for i in range(12)}
    item = create_model(f"{name.title()}Item", **fields)
    created = create_model(f"{name.title()}Created", id=(int, ...), item=(item, ...))
    router = APIRouter(prefix=f"/{name}", tags=[name])

    @router.get("/", response_model=list[item])
    async def list_items(limit: int = 10) -> list[Any]:
        return []

    @router.post("/", response_model=created)
    async def create_item(body: item) -> Any:  # type: ignore[valid-type]
        return {"id": 1, "item": body}

    @router.get("/{item_id}", response_model=item)
    async def get_item(item_id: int) -> Any:
        return {}

    @router.put("/{item_id}", response_model=item)
    async def update_item(item_id: int, body: item) -> Any:  # type: ignore[valid-type]
        return body

    @router.delete("/{item_id}")
    async def delete_item(item_id: int) -> dict[str, int]:
        return {"deleted": item_id}

    return router


app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["https://shop.example"], allow_methods=["*"])

api = APIRouter(prefix="/api/v1", dependencies=[Depends(current_user)])
for number in range(int(os.environ.get("STARTUP_APP_RESOURCES", "40"))):
    api.include_router(resource_router(f"resource{number}"))
app.include_router(api)


class Health(BaseModel):
    status: str


@app.get("/", response_model=Health)
async def root() -> Health:
    return Health(status="ok")


@lru_cache
def tax_tables() -> dict[str, float]:
    return startup_helpers.load_tax_tables(0.3)  # LAZY-LOAD: once, on the first request that needs it


orders = APIRouter(prefix="/orders", tags=["orders"])


@orders.get("/tax")
async def tax(country: str = "fr") -> dict[str, float]:
    return {"rate": tax_tables().get(country, 0.0)}


@orders.get("/export")
async def export_orders() -> dict[str, str]:
    return {"file": startup_helpers.write_export(0.3)}  # on every call


app.include_router(orders)

