"""``task_leak``: a fire-and-forget task per page view."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from fastapi_doctor_demo.analytics import Analytics
from fastapi_doctor_demo.scenarios import Scenario, cycle

router = APIRouter()


@router.get("/products/{product_id}/page")
async def product_page(product_id: int, request: Request) -> dict[str, Any]:
    request.app.state.analytics.track_view(product_id)
    return {"id": product_id}


@router.get("/v2/products/{product_id}/page")
async def product_page_v2(product_id: int, request: Request) -> dict[str, Any]:
    request.app.state.analytics.enqueue_view(product_id)
    return {"id": product_id}


SCENARIO = Scenario(
    root_cause="task_leak",
    route="/products/{product_id}/page",
    sick_paths=cycle("/products/{}/page", range(1, 9)),
    healthy_route="/v2/products/{product_id}/page",
    healthy_paths=cycle("/v2/products/{}/page", range(1, 9)),
    bug="track_view starts a task per page view that waits for the next analytics flush (every 10 min)",
    fix="hand the view to a bounded queue drained by a worker started in the lifespan (enqueue_view)",
    detectors=("tasks",),
    culprits=(Analytics.track_view,),
    router=router,
)
