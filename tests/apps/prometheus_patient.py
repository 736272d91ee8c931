"""The demo patient for tests/test_prometheus_e2e.py, with one pathology at a time.

The patient keeps its heavy AuditLogMiddleware on every route, so every scenario would also show
slow_middleware. Here the middleware stays only when PATIENT_SCENARIO is slow_middleware; the rest of
the patient is the demo's own app, unchanged.
"""

from __future__ import annotations

import os

from fastapi_doctor_demo.middleware import AuditLogMiddleware
from fastapi_doctor_demo.patient import app

if os.environ.get("PATIENT_SCENARIO") != "slow_middleware":
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not AuditLogMiddleware]

__all__ = ["app"]
