"""Orders, with a nested router for an order's items (two levels of include_router)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends

from shop.auth import current_user

items = APIRouter(prefix="/{order_id}/items")


@items.get("")
async def list_items(order_id: int) -> dict:
    time.sleep(0.3)  # mark: sleep in nested router
    return {"order": order_id, "items": []}


@items.get("/count")
async def count_items(order_id: int) -> dict:
    await asyncio.sleep(0.3)  # the healthy twin: awaits
    return {"order": order_id, "count": 0}


router = APIRouter(prefix="/orders", dependencies=[Depends(current_user)])
router.include_router(items)


@router.get("/{order_id}")
def get_order(order_id: int) -> dict:
    time.sleep(0.3)  # a sync def route: runs in the threadpool, the loop is free
    return {"order": order_id}


@router.post("/{order_id}/refund")
async def refund(order_id: int) -> dict:
    raise RuntimeError("the payment provider is down")  # an unhandled error: the client gets a 500
