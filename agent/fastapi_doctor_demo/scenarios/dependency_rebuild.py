"""``dependency_rebuild``: a new engine per request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_doctor_demo import orders
from fastapi_doctor_demo.db import get_session, get_session_new_engine
from fastapi_doctor_demo.scenarios import Scenario

router = APIRouter()


@router.get("/orders/recent")
async def recent(session: AsyncSession = Depends(get_session_new_engine)) -> list[dict[str, Any]]:
    return await orders.recent_orders(session)


@router.get("/v2/orders/recent")
async def recent_v2(session: AsyncSession = Depends(get_session)) -> list[dict[str, Any]]:
    return await orders.recent_orders(session)


SCENARIO = Scenario(
    root_cause="dependency_rebuild",
    route="/orders/recent",
    sick_paths=("/orders/recent",),
    healthy_route="/v2/orders/recent",
    healthy_paths=("/v2/orders/recent",),
    bug="the get_session_new_engine dependency calls create_async_engine (a new pool) on every request",
    fix="create the engine once in the lifespan and yield sessions from its sessionmaker",
    detectors=("dependencies", "db"),
    culprits=(get_session_new_engine,),
    router=router,
)
