"""``slow_middleware``: an audit log written and waited for before every request (its twin: a pure
ASGI request-id middleware on the same requests). Its sick paths are the shop's product route."""

from __future__ import annotations

from fastapi_doctor_demo.middleware import AuditLogMiddleware, AuditStore, RequestIdMiddleware
from fastapi_doctor_demo.scenarios import Scenario, cycle

SCENARIO = Scenario(
    root_cause="slow_middleware",
    route=None,
    sick_paths=cycle("/products/{}", range(1, 9)),
    healthy_route=None,
    healthy_paths=(),
    bug="AuditLogMiddleware waits for the audit store on every request, before the route runs",
    fix="keep middleware light: send audit records from a background task or a queue; prefer pure ASGI "
    "middleware to BaseHTTPMiddleware (compare RequestIdMiddleware, which is not flagged)",
    detectors=("middleware", "eventloop"),
    culprits=(AuditLogMiddleware.dispatch, AuditStore.write),
    middleware=((AuditLogMiddleware, {"store": AuditStore()}), (RequestIdMiddleware, {})),
    twin="RequestIdMiddleware (pure ASGI) on the same requests",
)
