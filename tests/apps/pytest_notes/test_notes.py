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


@pytest.fixture(autouse=True)
def fresh_settings(client: TestClient):
    """Each test reads the settings again (a test may change the environment)."""
    from app import get_settings

    yield
    get_settings.cache_clear()


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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_client_then_the_test_hashes_on_its_own_loop(client) -> None:
    """The app in the test's loop (httpx.AsyncClient + ASGITransport); the test's own code then blocks
    that loop (hashing a fixture password, as freezegun's freeze_time blocks it): the suite's code."""
    import hashlib

    from app import app
    from httpx import ASGITransport, AsyncClient

    async with AsyncClient(transport=ASGITransport(app), base_url="http://test") as ac:
        assert (await ac.post("/login/v2/access-token", params=LOGIN)).status_code == 200
        digest = hashlib.pbkdf2_hmac("sha256", b"a new secret", b"salt", 1_000_000)
        assert len(digest) == 32


def get_settings_override():
    from app import Settings

    return Settings(token_prefix="user-")  # FastAPI's documented override: a new object per request


def test_login_with_overridden_settings(client) -> None:
    """The suite's own dependency override builds settings in each request: the suite's code."""
    from app import app, get_settings

    app.dependency_overrides[get_settings] = get_settings_override
    try:
        assert client.post("/login/v2/access-token", params=LOGIN).json()["access_token"] == "user-1"
    finally:
        app.dependency_overrides.clear()
