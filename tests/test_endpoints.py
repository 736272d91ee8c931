"""Findings name the endpoint that pays, on an app laid out like real ones (tests/apps/shop_api.py,
a real uvicorn under the wrapper): a GET and a POST on one path are two endpoints; a middleware
that is slow for some paths is reported on those routes; a cheap middleware stays cheap under load."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from typing import Any

import httpx
import pytest
from apps.shop_api import TOKEN
from harness import APPS, AppProcess, metric_value, wait_until

ROUNDS = 20  # findings need at least 20 calls (kernel.windows.MIN_CALLS)


def mark_line(mark: str) -> int:
    lines = (APPS / "shop_api.py").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.endswith(f"# mark: {mark}"))


HEADERS = {"accept-encoding": "gzip", "origin": "https://shop.example.com", "authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def shop(serve: Any) -> AppProcess:
    return serve("shop_api:app", env={"OTEL_TRACES_SAMPLER_ARG": "0"}, ready_path="/health")


def send(app: AppProcess, method: str, path: str, n: int = ROUNDS, **kwargs: Any) -> None:
    with httpx.Client(timeout=30.0, headers=HEADERS) as client:
        for _ in range(n):
            response = client.request(method, app.url + path, **kwargs)
            assert response.status_code in (200, 201), (method, path, response.status_code, response.text[:200])


def test_a_large_get_is_not_blamed_on_the_post_of_the_same_path(shop):
    send(shop, "POST", "/items/", json={"name": "lamp", "price": 12.5})  # small answers, first
    send(shop, "GET", "/items/")  # the large listing

    found = wait_until(lambda: shop.findings("large_payload"))
    assert [(f["method"], f["route"]) for f in found] == [("GET", "/items/")]
    assert found[0]["location"] == {"file": "shop_api.py", "line": mark_line("large listing"),
                                    "function": "list_items"}
    assert "GET /items/" in found[0]["summary"]
    page = httpx.get(shop.side_url + "/", timeout=5.0).text
    assert "GET /items/" in page


def test_a_middleware_slow_for_some_paths_is_reported_on_those_routes(shop):
    for path in ("/orders/", "/items/3", "/orders/7", "/health"):
        send(shop, "GET", path)

    def audit_findings() -> list[dict[str, Any]]:
        found = [f for f in shop.findings("slow_middleware") if f["evidence"]["middleware"] == "AuditMiddleware"]
        return found if len(found) >= 2 else []

    found = wait_until(audit_findings)
    routes = sorted((f["method"], f["route"] or "") for f in found)
    assert routes == [("GET", "/orders/"), ("GET", "/orders/{order_id}")], json.dumps(found, indent=1)
    for f in found:
        assert f["location"]["line"] == mark_line("audit")
        assert f["evidence"]["self_time_p50_ms"] >= 35
        assert "every route" not in f["summary"].lower()
    # Nothing else is slow: the routes that skip the audit, the timing and CORS layers.
    others = [f for f in shop.findings("slow_middleware") if "self_time_p50_ms" in f["evidence"] and f not in found]
    assert others == [], json.dumps(others, indent=1)


async def _load(urls: list[str], headers: dict[str, str], clients: int, seconds: float) -> int:
    """Requests sent by ``clients`` keep-alive clients per URL during ``seconds``; all must succeed."""
    deadline = time.monotonic() + seconds
    sent = 0

    async def client(http: httpx.AsyncClient, url: str) -> None:
        nonlocal sent
        while time.monotonic() < deadline:
            response = await http.get(url)
            assert response.status_code == 200
            sent += 1

    limits = httpx.Limits(max_connections=clients * len(urls), max_keepalive_connections=clients * len(urls))
    async with httpx.AsyncClient(timeout=30.0, limits=limits, headers=headers) as http:
        await asyncio.gather(*(client(http, url) for url in urls for _ in range(clients)))
    return sent


def wrk(urls: list[str], header: str, connections: int, seconds: int) -> int:
    """Requests sent by one wrk per URL, all at once, each with ``connections`` connections."""
    runs = [
        subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", header, url],
                         stdout=subprocess.PIPE, text=True)
        for url in urls
    ]
    sent = 0
    for run in runs:
        out, _ = run.communicate(timeout=seconds + 30)
        assert run.returncode == 0 and "Non-2xx" not in out and "Socket errors" not in out, out
        sent += int(re.search(r"(\d+) requests in", out).group(1))
    return sent


def test_under_concurrent_load_a_cheap_timing_middleware_is_not_slow_and_the_audit_still_is(shop):
    # 32 connections on a 2-core machine: every layer's task switches wait for the loop behind the
    # other requests, and the loop's thread waits for a CPU. Neither is a layer's work: the cheap
    # layers stay silent, and the audit's 40 ms on the order routes is still found there.
    urls = [shop.url + "/items/3", shop.url + "/orders/7"]
    if shutil.which("wrk"):
        sent = wrk(urls, f"authorization: Bearer {TOKEN}", connections=16, seconds=10)
    else:
        sent = asyncio.run(_load(urls, {"authorization": f"Bearer {TOKEN}"}, clients=16, seconds=10.0))
    assert sent > 1000

    def timed() -> float | None:
        text = shop.metrics_text()
        count = metric_value(text, "fastapi_doctor_middleware_duration_seconds_count",
                             fastapi_doctor_middleware="add_process_time_header")
        return count if count and count >= 128 else None

    wait_until(timed, timeout=15)  # full windows of timed requests were judged
    # The layers' self-times (the event-loop watchdog's blocked-loop findings are another signal's).
    found = [f for f in shop.findings("slow_middleware") if "self_time_p50_ms" in f["evidence"]]
    described = json.dumps(found, indent=1)
    assert [(f["evidence"]["middleware"], f["method"], f["route"]) for f in found] == [
        ("AuditMiddleware", "GET", "/orders/{order_id}")], described
    assert found[0]["evidence"]["self_time_p50_ms"] >= 35, described


def test_every_request_of_a_keep_alive_client_is_measured_once(shop):
    # uvicorn starts a request that arrives while the previous one on the connection is still finishing
    # from inside that request's task: it inherits the previous request's context, and was taken for a
    # mounted app's request (already measured) and left out.
    send(shop, "POST", "/items/", json={"name": "lamp", "price": 12.5})
    send(shop, "GET", "/items/")

    def counts() -> tuple[float | None, float | None]:
        text = shop.metrics_text()
        return tuple(metric_value(text, "http_server_request_duration_seconds_count", http_request_method=method,
                                  http_route="/items/") for method in ("POST", "GET"))

    assert wait_until(lambda: counts() == (ROUNDS, ROUNDS) and counts(), timeout=10)
