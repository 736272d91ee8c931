"""One test per sick route and one per healthy twin, written as the patient's developers would.

Under plain ``pytest`` every test passes: the routes answer correctly. Under ``pytest --doctor`` the
sick ones fail with the root cause and the line (tests/test_pytest_plugin.py runs both).
"""

from __future__ import annotations

import httpx
import pytest


def test_quote_blocking_client(client) -> None:
    assert client.get("/quotes/ACME").json()["symbol"] == "ACME"


def test_quote_v2_async_client(client) -> None:
    assert client.get("/v2/quotes/ACME").json()["symbol"] == "ACME"


def test_recent_orders_new_engine(client) -> None:
    assert len(client.get("/orders/recent").json()) > 0


def test_recent_orders_v2_shared_engine(client) -> None:
    assert len(client.get("/v2/orders/recent").json()) > 0


def test_customer_orders_n_plus_one(client) -> None:
    assert len(client.get("/customers/3/orders").json()) == 15


def test_customer_orders_v2_selectinload(client) -> None:
    assert len(client.get("/v2/customers/3/orders").json()) == 15


def test_products_export_uncompressed(client) -> None:
    response = client.get("/products/export", headers={"accept-encoding": "gzip"})
    assert len(response.json()) == 2000


def test_products_v2_paginated(client) -> None:
    response = client.get("/v2/products?page=2", headers={"accept-encoding": "gzip"})
    assert response.json()["page"] == 2


def test_cart_session_left_open(client) -> None:
    assert client.get("/carts/4").json()["user_id"] == 4


def test_cart_v2_scoped_session(client) -> None:
    assert client.get("/v2/carts/5").json()["user_id"] == 5


def test_product_page_task_per_view(client) -> None:
    assert client.get("/products/6/page").json() == {"id": 6}


def test_product_page_v2_view_queue(client) -> None:
    assert client.get("/v2/products/6/page").json() == {"id": 6}


# -- the same app tested the other common ways --------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def async_client(patient_database: None):
    from fastapi_doctor_demo.patient import app

    async with app.router.lifespan_context(app):  # ASGITransport does not run the lifespan itself
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://patient") as c:
            yield c


@pytest.mark.anyio
async def test_async_client_customer_orders_n_plus_one(async_client) -> None:
    assert len((await async_client.get("/customers/5/orders")).json()) == 15


@pytest.mark.anyio
async def test_async_client_customer_orders_v2(async_client) -> None:
    assert len((await async_client.get("/v2/customers/5/orders")).json()) == 15


def test_live_server_quote_blocking_client(live_server) -> None:
    assert httpx.get(f"{live_server}/quotes/GLOBEX", timeout=30).json()["symbol"] == "GLOBEX"


def test_live_server_quote_v2(live_server) -> None:
    assert httpx.get(f"{live_server}/v2/quotes/GLOBEX", timeout=30).json()["symbol"] == "GLOBEX"
