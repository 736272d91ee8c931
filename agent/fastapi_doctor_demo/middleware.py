"""The patient's middleware: an audit log that waits for its store on every request (heavy) and a
request-id header (light)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

AUDIT_WRITE_S = 0.05


class AuditStore:
    """Stands in for a remote audit service: each write takes ``AUDIT_WRITE_S`` to be acknowledged."""

    def __init__(self) -> None:
        self.records = 0

    async def write(self, method: str, path: str) -> None:
        await asyncio.sleep(AUDIT_WRITE_S)
        self.records += 1


class AuditLogMiddleware(BaseHTTPMiddleware):
    """Writes an audit record before every request and waits for it: every response pays for it."""

    def __init__(self, app: Any, store: AuditStore) -> None:
        super().__init__(app)
        self.store = store

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        await self.store.write(request.method, request.url.path)
        return await call_next(request)


class RequestIdMiddleware:
    """Pure ASGI: adds ``x-request-id`` to each response, nothing else."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(next(self._ids)).encode()

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)
