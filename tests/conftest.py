from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import AppProcess, OTLPReceiver, start_otlp_receiver  # noqa: E402

# The throwaway PostgreSQL cluster (fixtures `postgres`, `pg_database`).
pytest_plugins = ["pg"]


@pytest.fixture
def otlp() -> Iterator[OTLPReceiver]:
    receiver = start_otlp_receiver()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def serve() -> Iterator[Callable[..., AppProcess]]:
    """``serve("module:app", env={...}, wrapper=True)`` starts a real server; all are stopped at the end."""
    started: list[AppProcess] = []

    def start(app: str, **kwargs: Any) -> AppProcess:
        process = AppProcess(app, **kwargs)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()
