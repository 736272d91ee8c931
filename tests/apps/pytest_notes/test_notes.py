"""The notes API's suite: ``client = TestClient(app)`` at module level, no ``with`` (a fresh event loop
per request, no lifespan). Plain tests of behaviour, nothing about fastapi-doctor."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    os.environ.setdefault("NOTES_DATABASE_URL", "sqlite:///" + str(tmp_path_factory.mktemp("notes") / "notes.db"))
    from app import app, init_db

    init_db()
    return TestClient(app)


AUTH = {"authorization": "Bearer user-1"}
LOGIN = {"email": "ann@example.com", "password": "secret"}


def test_login_verifies_the_hash_on_the_loop(client) -> None:
    assert client.post("/login/access-token", params=LOGIN).json()["access_token"] == "user-1"


def test_login_v2_verifies_in_a_thread(client) -> None:
    assert client.post("/login/v2/access-token", params=LOGIN).json()["access_token"] == "user-1"


def test_share_fires_and_forgets_a_task(client) -> None:
    assert client.post("/notes/2/share", headers=AUTH).json() == {"shared": 2}


def test_share_v2_in_background_tasks(client) -> None:
    assert client.post("/notes/v2/2/share", headers=AUTH).json() == {"shared": 2}


def test_list_notes(client) -> None:
    assert len(client.get("/notes/", headers=AUTH).json()) == 3
