"""The patient's own test suite: run it with ``pytest --doctor`` and each sick route's test fails with
its root cause and line, each healthy twin's test passes (docs/pytest.md)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def patient_database(tmp_path_factory: pytest.TempPathFactory) -> None:
    # One SQLite file per test process (pytest-xdist workers do not share it).
    if "PATIENT_DATABASE_URL" not in os.environ:
        os.environ["PATIENT_DATABASE_URL"] = "sqlite+aiosqlite:///" + str(tmp_path_factory.mktemp("db") / "patient.db")


@pytest.fixture(scope="session")
def client(patient_database: None) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from fastapi_doctor_demo.patient import app

    with TestClient(app) as client:  # the lifespan runs: pricing service, engine, schema
        yield client


@pytest.fixture(scope="session")
def live_server(patient_database: None) -> Iterator[str]:
    """The patient under a real uvicorn server on a thread, as some suites test their app."""
    import uvicorn

    from fastapi_doctor_demo.patient import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(200):
        if server.started:
            started.set()
            break
        threading.Event().wait(0.05)
    assert started.is_set(), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
