"""Diagnosis on an app shaped like real services (tests/apps/shop/): routes on included routers with
prefixes and router dependencies, nested routers, CORS/TrustedHost/GZip middleware, an auth
dependency and a mounted FastAPI app. Every block names its root cause, its full route template and
the user's line, on every supported FastAPI (``make test-matrix`` runs this file on 0.100, 0.115 and
the newest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi
import httpx
import pytest
from harness import APPS, metric_value, wait_until

SHOP = APPS / "shop"
BLOCK_ENV = {"FASTAPI_DOCTOR_LOOP_BLOCK_MS": "50"}


def mark_line(path: Path, mark: str) -> int:
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if f"# mark: {mark}" in text:
            return number
    raise AssertionError(f"{mark} not in {path}")


def finding_on(app: Any, route: str) -> dict[str, Any]:
    """The one finding of the event-loop watchdog on ``route``, whatever its root cause."""

    def found() -> list[dict[str, Any]]:
        return [f for f in app.findings() if f["route"] == route and "blocked_ms" in f["evidence"]]

    [finding] = wait_until(found, timeout=10)
    return finding


@pytest.fixture(scope="module")
def shop(request: pytest.FixtureRequest) -> Any:
    from harness import AppProcess

    app = AppProcess("shop.main:app", env=BLOCK_ENV).start()
    request.addfinalizer(app.stop)
    return app


@pytest.mark.parametrize(
    ("method", "path", "route", "file", "mark", "call"),
    [
        # CPU-bound hashing in an async route of an included router.
        ("POST", "/api/v1/users/login", "/api/v1/users/login", "routers/users.py", "pbkdf2 on the loop",
         "hashlib.pbkdf2_hmac"),
        # time.sleep in a router included in a router included in the app.
        ("GET", "/api/v1/orders/7/items", "/api/v1/orders/{order_id}/items", "routers/orders.py",
         "sleep in nested router", "time.sleep"),
        # A sync query in an async router-level dependency.
        ("GET", "/api/v1/admin/stats", "/api/v1/admin/stats", "auth.py", "sync query in async dependency", None),
        # time.sleep in a route of a mounted FastAPI app (with its own BaseHTTPMiddleware).
        ("GET", "/internal/ping/x", "/internal/ping/{name}", "internal.py", "sleep in mounted app", "time.sleep"),
    ],
)
def test_a_block_in_a_route_of_a_real_app_shape_is_blocking_io_at_the_users_line(
    shop: Any, method: str, path: str, route: str, file: str, mark: str, call: str | None
) -> None:
    for _ in range(2):  # a block is a finding once it recurs (once could be start-up work)
        assert httpx.request(method, shop.url + path, timeout=10).status_code == 200
    finding = finding_on(shop, route)
    # Not the middleware the stack passed through (CORS, TrustedHost, GZip): the route's own code.
    assert finding["root_cause"] == "blocking_io", finding["summary"]
    assert "middleware" not in finding["evidence"]
    assert finding["location"]["file"] == f"shop/{file}"
    assert finding["location"]["line"] == mark_line(SHOP / file, mark)
    if call is not None:
        assert finding["evidence"]["call"] == call
    assert f"{method} {route}" in finding["summary"]  # made inside the request, which it names


def test_healthy_twins_and_the_doctor_page_of_a_real_app_shape(shop: Any) -> None:
    for method, path in [
        ("POST", "/api/v1/users/login-threaded"),  # the same hash in the threadpool
        ("GET", "/api/v1/orders/7/items/count"),  # awaits instead of sleeping
        ("GET", "/api/v1/orders/7"),  # sync def: sleeps in the threadpool
        ("GET", "/api/v1/users/me"),
        ("GET", "/internal/health/x"),
    ]:
        assert httpx.request(method, shop.url + path, timeout=10).status_code == 200
    for method, path in [("POST", "/api/v1/users/login-threaded"), ("GET", "/api/v1/orders/7/items/count")]:
        assert httpx.request(method, shop.url + path, timeout=10).status_code == 200  # twice, as a sick route
    # A sick route after the twins: once its finding is in, the twins' episodes would be too.
    for _ in range(2):
        assert httpx.post(shop.url + "/api/v1/users/login", timeout=10).status_code == 200
    finding_on(shop, "/api/v1/users/login")
    routes = {f["route"] for f in shop.findings()}
    assert not routes & {
        "/api/v1/users/login-threaded",
        "/api/v1/orders/{order_id}/items/count",
        "/api/v1/orders/{order_id}",
        "/api/v1/users/me",
        "/internal/health/{name}",
    }
    assert not shop.findings("slow_middleware")
    doc = shop.doctor()
    assert doc["diagnosis"] == {"on": True}
    page = httpx.get(shop.side_url + "/", timeout=5).text
    assert "Diagnosis is off" not in page


def test_a_request_to_a_mounted_app_is_counted_once_with_its_full_route(shop: Any) -> None:
    def counts() -> dict[str, float]:
        text = shop.metrics_text()
        # Every series of the metric, whoever records it (the agent, or contrib's instrumentation).
        return {
            route: metric_value(text, "http_server_request_duration_seconds_count", http_route=route) or 0.0
            for route in ("/internal/health/{name}", "/health/{name}", "/internal/{path}", "/internal")
        }

    assert httpx.get(shop.url + "/internal/health/first", timeout=10).status_code == 200
    before = wait_until(lambda: (c := counts())["/internal/health/{name}"] >= 1 and c)
    for _ in range(3):
        assert httpx.get(shop.url + "/internal/health/again", timeout=10).status_code == 200
    expected = before["/internal/health/{name}"] + 3
    after = wait_until(lambda: (c := counts())["/internal/health/{name}"] >= expected and c)
    assert after["/internal/health/{name}"] == expected
    assert after["/health/{name}"] == after["/internal/{path}"] == after["/internal"] == 0


def test_an_unhandled_error_is_counted_as_the_500_the_client_got(shop: Any) -> None:
    assert httpx.post(shop.url + "/api/v1/orders/7/refund", timeout=10).status_code == 500

    def count() -> float | None:
        return metric_value(shop.metrics_text(), "http_server_request_duration_seconds_count",
                            http_route="/api/v1/orders/{order_id}/refund", http_response_status_code="500")

    assert wait_until(count) == 1


def test_the_tested_fastapi_is_one_the_agent_supports() -> None:
    # The matrix must diagnose on each FastAPI it installs, not skip: a version outside the range
    # would turn diagnosis off and fail the tests above, not pass them silently.
    major, minor = (int(p) for p in fastapi.__version__.split(".")[:2])
    assert (major, minor) >= (0, 100)
