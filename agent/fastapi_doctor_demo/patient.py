"""The patient: a small shop API with one sick route per root cause, each with a healthy twin under
``/v2`` that does the same job the right way.

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
from fastapi import Depends, FastAPI, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fastapi_doctor_demo import analytics, carts, catalog, orders, pricing
from fastapi_doctor_demo.db import Product, create_schema, get_session, get_session_new_engine, make_engine
from fastapi_doctor_demo.middleware import AuditLogMiddleware, AuditStore, RequestIdMiddleware


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


app = FastAPI(title="patient", lifespan=lifespan)
app.add_middleware(AuditLogMiddleware, store=AuditStore())
app.add_middleware(RequestIdMiddleware)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# -- blocking_io: a synchronous HTTP client inside async def ----------------------------------


@app.get("/quotes/{symbol}")
async def quote(symbol: str, request: Request) -> dict[str, Any]:
    return pricing.fetch_quote_blocking(request.app.state.pricing_url, symbol)


@app.get("/v2/quotes/{symbol}")
async def quote_v2(symbol: str, request: Request) -> dict[str, Any]:
    return await pricing.fetch_quote(request.app.state.pricing, symbol)


# -- dependency_rebuild: a new engine per request ------------------------------------------------


@app.get("/orders/recent")
async def recent(session: AsyncSession = Depends(get_session_new_engine)) -> list[dict[str, Any]]:
    return await orders.recent_orders(session)


@app.get("/v2/orders/recent")
async def recent_v2(session: AsyncSession = Depends(get_session)) -> list[dict[str, Any]]:
    return await orders.recent_orders(session)


# -- pool_leak: a session that is never closed ------------------------------------------------------


@app.get("/carts/{user_id}")
async def cart(user_id: int, request: Request) -> dict[str, Any]:
    return await carts.open_cart(request.app.state.sessions, user_id)


@app.get("/v2/carts/{user_id}")
async def cart_v2(user_id: int, request: Request) -> dict[str, Any]:
    return await carts.view_cart(request.app.state.sessions, user_id)


# -- large_payload: the whole catalogue, uncompressed ------------------------------------------------


@app.get("/products/export")
async def export(session: AsyncSession = Depends(get_session)) -> list[dict[str, Any]]:
    return await catalog.export_all(session)


@app.get("/v2/products")
async def products_v2(page: int = 1, size: int = 50, session: AsyncSession = Depends(get_session)) -> dict[str, Any]:
    return await catalog.page(session, page, size)


@app.get("/products/{product_id}")
async def product(product_id: int, session: AsyncSession = Depends(get_session)) -> dict[str, Any]:
    p = await session.scalar(select(Product).where(Product.id == product_id))
    return {"id": product_id, "name": p.name if p else None}


# -- n_plus_one: one query per order --------------------------------------------------------------


@app.get("/customers/{customer_id}/orders")
async def customer_orders(customer_id: int, session: AsyncSession = Depends(get_session)) -> list[dict[str, Any]]:
    return await orders.orders_with_lines_n_plus_one(session, customer_id)


@app.get("/v2/customers/{customer_id}/orders")
async def customer_orders_v2(
    customer_id: int, session: AsyncSession = Depends(get_session)
) -> list[dict[str, Any]]:
    return await orders.orders_with_lines(session, customer_id)


# -- task_leak: a fire-and-forget task per page view ----------------------------------------------


@app.get("/products/{product_id}/page")
async def product_page(product_id: int, request: Request) -> dict[str, Any]:
    request.app.state.analytics.track_view(product_id)
    return {"id": product_id}


@app.get("/v2/products/{product_id}/page")
async def product_page_v2(product_id: int, request: Request) -> dict[str, Any]:
    request.app.state.analytics.enqueue_view(product_id)
    return {"id": product_id}
