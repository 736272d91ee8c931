"""``n_plus_one``: one query per order."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_doctor_demo import orders
from fastapi_doctor_demo.db import get_session
from fastapi_doctor_demo.scenarios import Scenario, cycle

router = APIRouter()


@router.get("/customers/{customer_id}/orders")
async def customer_orders(customer_id: int, session: AsyncSession = Depends(get_session)) -> list[dict[str, Any]]:
    return await orders.orders_with_lines_n_plus_one(session, customer_id)


@router.get("/v2/customers/{customer_id}/orders")
async def customer_orders_v2(
    customer_id: int, session: AsyncSession = Depends(get_session)
) -> list[dict[str, Any]]:
    return await orders.orders_with_lines(session, customer_id)


SCENARIO = Scenario(
    root_cause="n_plus_one",
    route="/customers/{customer_id}/orders",
    sick_paths=cycle("/customers/{}/orders", range(1, 9)),
    healthy_route="/v2/customers/{customer_id}/orders",
    healthy_paths=cycle("/v2/customers/{}/orders", range(1, 9)),
    bug="one SELECT of order lines per order, in a loop",
    fix="load the lines with the orders: selectinload(Order.lines), or one IN query",
    detectors=("db",),
    culprits=(orders.orders_with_lines_n_plus_one,),
    router=router,
)
