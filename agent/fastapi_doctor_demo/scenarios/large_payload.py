"""``large_payload``: the whole catalogue, uncompressed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_doctor_demo import catalog
from fastapi_doctor_demo.db import get_session
from fastapi_doctor_demo.scenarios import Scenario, cycle

router = APIRouter()


@router.get("/products/export")
async def export(session: AsyncSession = Depends(get_session)) -> list[dict[str, Any]]:
    return await catalog.export_all(session)


@router.get("/v2/products")
async def products_v2(page: int = 1, size: int = 50, session: AsyncSession = Depends(get_session)) -> dict[str, Any]:
    return await catalog.page(session, page, size)


SCENARIO = Scenario(
    root_cause="large_payload",
    route="/products/export",
    sick_paths=("/products/export",),
    healthy_route="/v2/products",
    healthy_paths=cycle("/v2/products?page={}", range(1, 9)),
    bug="the whole catalogue (~800 kB of JSON) in one uncompressed response",
    fix="paginate (/v2/products?page=N), and add GZipMiddleware(minimum_size=1000) for what stays large",
    detectors=("responses", "eventloop"),
    culprits=(export, catalog.export_all),
    router=router,
    requests=30,
    quick_requests=20,
    concurrency=4,
)
