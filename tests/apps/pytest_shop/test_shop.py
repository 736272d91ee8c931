"""The shop's suite: plain tests of behaviour, nothing about fastapi-doctor (except one allow marker)."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    os.environ.setdefault("SHOP_DATABASE_URL", "sqlite:///" + str(tmp_path_factory.mktemp("shop") / "shop.db"))
    from app import app

    with TestClient(app) as client:
        yield client


AUTH = {"authorization": "Bearer user-1"}


def test_summary_on_a_frozen_date(client) -> None:
    """Runs first: freezegun freezes time.monotonic, the clock of the app's event loop, meanwhile."""
    from freezegun import freeze_time

    with freeze_time("2023-01-01"):
        assert client.get("/me/v2/summary", headers=AUTH).json() == {"orders": 12}


def test_login_hashes_on_the_loop(client) -> None:
    assert client.post("/auth/login", params={"name": "user1", "password": "secret"}).json() == {"token": "user-1"}


def test_login_v2_hashes_in_a_thread(client) -> None:
    assert client.post("/auth/v2/login", params={"name": "user1", "password": "secret"}).json() == {"token": "user-1"}


def test_my_orders_n_plus_one_sync_session(client) -> None:
    assert len(client.get("/me/orders", headers=AUTH).json()) == 12


def test_my_orders_v2_selectinload(client) -> None:
    assert len(client.get("/me/v2/orders", headers=AUTH).json()) == 12


def test_summary_parks_a_sync_session(client) -> None:
    assert client.get("/me/summary", headers=AUTH).json() == {"orders": 12}


def test_summary_v2_closes_its_session(client) -> None:
    assert client.get("/me/v2/summary", headers=AUTH).json() == {"orders": 12}


def test_pause_behaves_as_without_the_plugin(client) -> None:
    assert client.get("/misc/pause").json() == {"result": "slept"}


@pytest.mark.doctor(allow=["n_plus_one"])
def test_my_orders_n_plus_one_allowed_here(client) -> None:
    assert len(client.get("/me/orders", headers={"authorization": "Bearer user-2"}).json()) == 12
