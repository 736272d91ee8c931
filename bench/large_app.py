"""A large app for the "flat with the app's size" benchmark: ``BENCH_LARGE_ROUTES`` routes (1,000 by
default) on 50 ``APIRouter``s included with prefixes and a router-level dependency, 8 middlewares
(4 pure ASGI, 3 ``BaseHTTPMiddleware`` and ``CORSMiddleware``) and 5 dependencies per route (an auth
chain that decodes a token and loads the user, a settings dependency, a pagination dependency and
the router's own).

The measured route, ``/r0/items/{item_id}/0`` (``MEASURED_PATH``), has the same shape in an app of
any size: ``BENCH_LARGE_ROUTES=1`` builds the same route behind the same middlewares, alone, so the
agent's cost on it can be compared between a one-route app and a 1,000-route one.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

ROUTES = int(os.environ.get("BENCH_LARGE_ROUTES", "1000"))
ROUTERS = 50
MEASURED_PATH = "/r0/items/7/0"
# A token for user 7, as a client would send it (no signature: the decoding is the work that matters).
TOKEN = base64.urlsafe_b64encode(json.dumps({"sub": 7, "scope": "read"}).encode()).decode()
HEADERS = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"x-tenant", b"acme")]

_USERS = {i: {"id": i, "name": f"user-{i}", "active": True} for i in range(100)}


class _PureASGI:
    """A light pure ASGI middleware (request id, tenant, timing header, ...)."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[self.name] = True
        await self.app(scope, receive, send)


class _HeaderMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, header: str) -> None:
        super().__init__(app)
        self.header = header

    async def dispatch(self, request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers[self.header] = "1"
        return response


def settings() -> dict[str, Any]:
    return {"page_max": 100}


async def token(authorization: Annotated[str, Header()] = "") -> dict[str, Any]:
    if not authorization.startswith("Bearer "):
        raise HTTPException(401)
    return json.loads(base64.urlsafe_b64decode(authorization[7:]))


async def current_user(claims: Annotated[dict[str, Any], Depends(token)]) -> dict[str, Any]:
    user = _USERS.get(claims["sub"])
    if user is None:
        raise HTTPException(401)
    return user


async def tenant(x_tenant: Annotated[str, Header()] = "public") -> str:
    return x_tenant


def pagination(conf: Annotated[dict[str, Any], Depends(settings)], limit: int = 10, offset: int = 0) -> tuple[int, int]:
    return min(limit, conf["page_max"]), offset


def _router(index: int, routes: int) -> APIRouter:
    router = APIRouter(dependencies=[Depends(tenant)])
    for j in range(routes):

        async def endpoint(
            item_id: int,
            user: Annotated[dict[str, Any], Depends(current_user)],
            page: Annotated[tuple[int, int], Depends(pagination)],
            conf: Annotated[dict[str, Any], Depends(settings)],
        ) -> dict[str, Any]:
            return {"id": item_id, "user": user["name"], "limit": page[0], "max": conf["page_max"]}

        router.add_api_route(f"/items/{{item_id}}/{j}", endpoint, methods=["GET"], name=f"item_{index}_{j}")
    return router


def build(routes: int = ROUTES) -> FastAPI:
    app = FastAPI()
    per_router = max(1, routes // ROUTERS)
    for i in range(min(ROUTERS, routes)):
        app.include_router(_router(i, per_router), prefix=f"/r{i}")
    app.add_middleware(CORSMiddleware, allow_origins=["https://example.com"], allow_methods=["*"])
    for k in range(3):
        app.add_middleware(_HeaderMiddleware, header=f"x-layer-{k}")
    for k in range(4):
        app.add_middleware(_PureASGI, name=f"asgi-{k}")
    return app


app = build()
