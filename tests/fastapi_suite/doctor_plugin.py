"""pytest plugin for FastAPI's own test suite: the agent runs in the test process from the start, so
every FastAPI app the suite creates is built under it (``-p doctor_plugin``)."""

from __future__ import annotations


def pytest_configure(config: object) -> None:
    import fastapi_doctor

    fastapi_doctor.instrument()
    from fastapi_doctor import _agent

    if _agent.get() is None:
        raise RuntimeError("fastapi-doctor did not start in the FastAPI suite")
