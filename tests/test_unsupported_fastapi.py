"""On a FastAPI older than the supported range the agent says so once, and that diagnosis is off.

Runs in ``make test-matrix`` on FastAPI 0.68 (its own venv); on a supported FastAPI there is nothing
to check here.
"""

from __future__ import annotations

import subprocess

import fastapi
import httpx
import pytest
from harness import BIN, wait_until

VERSION = fastapi.__version__
pytestmark = pytest.mark.skipif(
    tuple(int(p) for p in VERSION.split(".")[:2]) >= (0, 100),
    reason=f"FastAPI {VERSION} is supported (make test-matrix runs this on FastAPI 0.68)",
)


def test_an_unsupported_fastapi_gets_one_warning_and_diagnosis_says_it_is_off(serve):
    app = serve("hello:app")
    for _ in range(3):
        assert httpx.get(app.url + "/items/1", timeout=10).json() == {"id": 1}

    doc = app.doctor()
    assert doc["diagnosis"]["on"] is False
    assert f"FastAPI {VERSION} is not supported" in doc["diagnosis"]["reason"]
    assert "0.100" in doc["diagnosis"]["reason"]
    page = httpx.get(app.side_url + "/", timeout=5).text
    assert "Diagnosis is off" in page and f"FastAPI {VERSION}" in page
    assert "No finding." not in page and "Not diagnosed" in page  # not "healthy": not looked at
    report = subprocess.run([str(BIN / "fastapi-doctor"), "report", "--url", app.side_url], capture_output=True,
                            text=True, timeout=30)
    assert f"Diagnosis is off: FastAPI {VERSION} is not supported" in report.stdout, report
    assert "No finding" not in report.stdout

    logs = wait_until(lambda: app.logs() if "Diagnosis is off" in app.logs() else None)
    warnings = [line for line in logs.splitlines() if "is not supported" in line]
    assert len(warnings) == 1, logs
    assert f"FastAPI {VERSION}" in warnings[0] and "0.100" in warnings[0]
    assert "Traceback" not in logs, logs
    # Contrib's own version check is not repeated as an error (the line above says what it means).
    assert "only instruments" not in logs, logs
