"""``pool_leak``: a session that is never closed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from fastapi_doctor_demo import carts
from fastapi_doctor_demo.scenarios import Scenario, cycle

router = APIRouter()


@router.get("/carts/{user_id}")
async def cart(user_id: int, request: Request) -> dict[str, Any]:
    return await carts.open_cart(request.app.state.sessions, user_id)


@router.get("/v2/carts/{user_id}")
async def cart_v2(user_id: int, request: Request) -> dict[str, Any]:
    return await carts.view_cart(request.app.state.sessions, user_id)


SCENARIO = Scenario(
    root_cause="pool_leak",
    route="/carts/{user_id}",
    sick_paths=cycle("/carts/{}", range(1, 4)),
    healthy_route="/v2/carts/{user_id}",
    healthy_paths=cycle("/v2/carts/{}", range(1, 4)),
    bug="open_cart parks its AsyncSession until the user's next visit: the connection stays checked out",
    fix="async with sessions() as session: ... (or a dependency that yields inside async with)",
    detectors=("db",),
    culprits=(carts.open_cart, carts._cart_of),
    router=router,
    requests=24,
    quick_requests=12,
    wait_s=12.0,
)
