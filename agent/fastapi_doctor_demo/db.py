"""The patient's database: models, the engine made once at start-up, sessions, and a little data.

SQLite (aiosqlite) by default; ``PATIENT_DATABASE_URL`` points it at PostgreSQL (asyncpg). Tables are
prefixed ``patient_`` and created when missing; data is added only to empty tables, so pointing the
demo at an existing database never drops or rewrites anything.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from fastapi import Request
from sqlalchemy import ForeignKey, String, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

PRODUCTS = 2000
CUSTOMERS = 20
ORDERS_PER_CUSTOMER = 15
LINES_PER_ORDER = 3


def database_url() -> str:
    url = os.environ.get("PATIENT_DATABASE_URL")
    if url:
        return url
    return "sqlite+aiosqlite:///" + os.path.join(tempfile.gettempdir(), "fastapi-doctor-patient.db")


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "patient_products"

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(String(1000))
    category: Mapped[str] = mapped_column(String(40))
    price_cents: Mapped[int]


class Customer(Base):
    __tablename__ = "patient_customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "patient_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("patient_customers.id"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime]
    customer: Mapped[Customer] = relationship(back_populates="orders")
    lines: Mapped[list[OrderLine]] = relationship(back_populates="order", order_by="OrderLine.id")


class OrderLine(Base):
    __tablename__ = "patient_order_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("patient_orders.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("patient_products.id"))
    quantity: Mapped[int]
    order: Mapped[Order] = relationship(back_populates="lines")


def make_engine(url: str | None = None) -> AsyncEngine:
    """The application's one engine, created in the lifespan: one pool for every request."""
    return create_async_engine(url or database_url(), pool_size=10, max_overflow=5, pool_timeout=10)


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        if (await conn.scalar(select(func.count()).select_from(Product))) == 0:
            await _seed(conn)


async def _seed(conn: object) -> None:
    words = ("steel", "oak", "linen", "copper", "walnut", "glass", "wool", "cedar", "slate", "brass")
    blurb = (
        "Made to last in a small workshop, finished by hand and checked twice before it ships. "
        "Care: wipe clean with a dry cloth; keep away from direct heat. "
    )
    products = [
        {
            "id": i,
            "sku": f"SKU-{i:06d}",
            "name": f"{words[i % 10].title()} item {i}",
            "description": blurb * 2 + f"Batch {i % 97}.",
            "category": words[(i * 7) % 10],
            "price_cents": 500 + (i * 37) % 20000,
        }
        for i in range(1, PRODUCTS + 1)
    ]
    customers = [{"id": c, "name": f"Customer {c}"} for c in range(1, CUSTOMERS + 1)]
    start = datetime(2024, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    orders, lines = [], []
    order_id = line_id = 0
    for c in range(1, CUSTOMERS + 1):
        for k in range(ORDERS_PER_CUSTOMER):
            order_id += 1
            status = "cart" if k == ORDERS_PER_CUSTOMER - 1 else "shipped"
            orders.append({"id": order_id, "customer_id": c, "status": status,
                           "created_at": start + timedelta(hours=order_id)})
            for n in range(LINES_PER_ORDER):
                line_id += 1
                lines.append({"id": line_id, "order_id": order_id, "product_id": 1 + (order_id * 13 + n) % PRODUCTS,
                              "quantity": 1 + n})
    await conn.execute(insert(Product), products)  # type: ignore[attr-defined]
    await conn.execute(insert(Customer), customers)  # type: ignore[attr-defined]
    await conn.execute(insert(Order), orders)  # type: ignore[attr-defined]
    await conn.execute(insert(OrderLine), lines)  # type: ignore[attr-defined]


# -- dependencies --------------------------------------------------------------------------------


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session from the app's one pool, closed when the request ends (the fix)."""
    async with request.app.state.sessions() as session:
        yield session


async def get_session_new_engine() -> AsyncIterator[AsyncSession]:
    """Builds a whole new engine (and connection pool) for every request: the sick dependency."""
    engine = create_async_engine(database_url())
    try:
        async with AsyncSession(engine) as session:
            yield session
    finally:
        await engine.dispose()
