"""Orders of a customer: one query per order (the N+1 bug) and one query for all (the fix)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from fastapi_doctor_demo.db import Order, OrderLine


def _as_dict(order: Order, lines: list[OrderLine]) -> dict[str, Any]:
    return {"id": order.id, "status": order.status, "created_at": order.created_at.isoformat(),
            "lines": [{"product_id": li.product_id, "quantity": li.quantity} for li in lines]}


async def orders_with_lines_n_plus_one(session: AsyncSession, customer_id: int) -> list[dict[str, Any]]:
    orders = (await session.scalars(select(Order).where(Order.customer_id == customer_id).order_by(Order.id))).all()
    result = []
    for order in orders:
        # One statement per order: 15 orders, 16 queries.
        lines = (await session.scalars(select(OrderLine).where(OrderLine.order_id == order.id))).all()
        result.append(_as_dict(order, list(lines)))
    return result


async def orders_with_lines(session: AsyncSession, customer_id: int) -> list[dict[str, Any]]:
    query = (
        select(Order)
        .where(Order.customer_id == customer_id)
        .order_by(Order.id)
        .options(selectinload(Order.lines))  # all lines in one IN query
    )
    orders = (await session.scalars(query)).all()
    return [_as_dict(order, list(order.lines)) for order in orders]


async def recent_orders(session: AsyncSession, limit: int = 10) -> list[dict[str, Any]]:
    orders = (await session.scalars(select(Order).order_by(Order.created_at.desc()).limit(limit))).all()
    return [{"id": o.id, "customer_id": o.customer_id, "status": o.status} for o in orders]
