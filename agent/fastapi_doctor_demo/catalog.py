"""The product catalogue: a full export in one response (the bug) and a paginated listing (the fix)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_doctor_demo.db import Product

PAGE_SIZE_MAX = 100


def _as_dict(p: Product) -> dict[str, Any]:
    return {"id": p.id, "sku": p.sku, "name": p.name, "description": p.description,
            "category": p.category, "price_cents": p.price_cents}


async def export_all(session: AsyncSession) -> list[dict[str, Any]]:
    """Every product in one JSON array, uncompressed: hundreds of kilobytes per call."""
    products = (await session.scalars(select(Product).order_by(Product.id))).all()
    return [_as_dict(p) for p in products]


async def page(session: AsyncSession, number: int, size: int) -> dict[str, Any]:
    """One page of products and the cursor to the next."""
    size = max(1, min(size, PAGE_SIZE_MAX))
    start = (max(number, 1) - 1) * size
    query = select(Product).where(Product.id > start).order_by(Product.id).limit(size)
    products = (await session.scalars(query)).all()
    return {"page": max(number, 1), "size": size, "items": [_as_dict(p) for p in products],
            "next": max(number, 1) + 1 if len(products) == size else None}
