"""Shopping carts: a session kept open "for the checkout step" (the leak) and a scoped one (the fix)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fastapi_doctor_demo.db import Order

# Sessions parked between the cart view and the checkout "to reuse them": each holds a pool
# connection, in an open transaction, for as long as the user takes to come back.
_open_carts: dict[int, AsyncSession] = {}


async def _cart_of(session: AsyncSession, user_id: int) -> dict[str, Any]:
    query = select(Order).where(Order.customer_id == user_id, Order.status == "cart")
    order = (await session.scalars(query)).first()
    return {"user_id": user_id, "order_id": order.id if order else None}


async def open_cart(sessions: async_sessionmaker[AsyncSession], user_id: int) -> dict[str, Any]:
    previous = _open_carts.pop(user_id, None)
    if previous is not None:
        await previous.close()
    session = sessions()  # not closed when the request ends: its connection stays checked out
    cart = await _cart_of(session, user_id)
    _open_carts[user_id] = session
    return cart


async def view_cart(sessions: async_sessionmaker[AsyncSession], user_id: int) -> dict[str, Any]:
    async with sessions() as session:  # connection back to the pool when the block ends
        return await _cart_of(session, user_id)
