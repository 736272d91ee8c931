"""``blocking_io``: a synchronous HTTP client inside ``async def``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from fastapi_doctor_demo import pricing
from fastapi_doctor_demo.scenarios import Scenario, cycle

router = APIRouter()


@router.get("/quotes/{symbol}")
async def quote(symbol: str, request: Request) -> dict[str, Any]:
    return pricing.fetch_quote_blocking(request.app.state.pricing_url, symbol)


@router.get("/v2/quotes/{symbol}")
async def quote_v2(symbol: str, request: Request) -> dict[str, Any]:
    return await pricing.fetch_quote(request.app.state.pricing, symbol)


SCENARIO = Scenario(
    root_cause="blocking_io",
    route="/quotes/{symbol}",
    sick_paths=cycle("/quotes/{}", ("ACME", "GLOBEX", "INITECH", "UMBRELLA")),
    healthy_route="/v2/quotes/{symbol}",
    healthy_paths=cycle("/v2/quotes/{}", ("ACME", "GLOBEX", "INITECH", "UMBRELLA")),
    bug="urllib.request.urlopen (a synchronous HTTP client) inside an async def route",
    fix="await an async client created once (httpx.AsyncClient in the lifespan), or move the call to a "
    "thread with await anyio.to_thread.run_sync(...)",
    detectors=("eventloop",),
    culprits=(pricing.fetch_quote_blocking,),
    router=router,
    note="the healthy twin is slow too: while the loop is blocked, every request on it waits",
    requests=16,
    quick_requests=10,
    concurrency=4,
)
