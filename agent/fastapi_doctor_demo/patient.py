"""The patient: a small shop API with one sick route per root cause, each with a healthy twin under
``/v2`` that does the same job the right way; each pair is declared by its scenario
(:mod:`fastapi_doctor_demo.scenarios`).

Run it under the agent with ``fastapi-doctor demo`` (or ``opentelemetry-instrument uvicorn
fastapi_doctor_demo.patient:app``). ``PATIENT_DATABASE_URL`` selects the database (SQLite file by
default; ``postgresql+asyncpg://…`` for PostgreSQL).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fastapi_doctor_demo import analytics, pricing
from fastapi_doctor_demo.db import Product, create_schema, get_session, make_engine
from fastapi_doctor_demo.scenarios import SCENARIOS


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Everything expensive is built once here and shared by every request.
    pricing_service = pricing.PricingService()
    app.state.pricing_url = pricing_service.start()
    app.state.engine = make_engine()
    app.state.sessions = async_sessionmaker(app.state.engine, expire_on_commit=False)
    await create_schema(app.state.engine)
    app.state.analytics = analytics.Analytics()
    analytics_worker = asyncio.create_task(app.state.analytics.worker())
    async with httpx.AsyncClient(base_url=app.state.pricing_url, timeout=10) as client:
        app.state.pricing = client
        yield
    analytics_worker.cancel()
    await app.state.engine.dispose()
    pricing_service.stop()


def _serve_scenarios(app: FastAPI) -> None:
    """Each scenario's sick route and healthy twin (fastapi_doctor_demo/scenarios/), in the demo's order."""
    for scenario in SCENARIOS:
        for middleware, options in scenario.middleware:
            app.add_middleware(middleware, **options)
        if scenario.router is not None:
            app.include_router(scenario.router)


app = FastAPI(title="patient", lifespan=lifespan)
_serve_scenarios(app)


# -- the shop's own routes (after the scenarios': /products/export is not a product id) ---------------


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/products/{product_id}")
async def product(product_id: int, session: AsyncSession = Depends(get_session)) -> dict[str, Any]:
    p = await session.scalar(select(Product).where(Product.id == product_id))
    return {"id": product_id, "name": p.name if p else None}
