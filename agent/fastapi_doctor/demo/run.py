"""``fastapi-doctor demo``: start the patient under the agent, send it requests, print the findings.

The full patient with a scenario per root cause grows with the signals (see the demo issue); this
runner already does the real thing: a real server under ``opentelemetry-instrument``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fastapi_doctor.cli import ReportError, fetch_doctor
from fastapi_doctor.report.terminal import render_table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def main(args: argparse.Namespace) -> int:
    port, side = _free_port(), _free_port()
    env = dict(os.environ, OTEL_EXPORTER_PROMETHEUS_PORT=str(side), OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
               OTEL_SERVICE_NAME="patient")
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "opentelemetry-instrument"), sys.executable, "-m", "uvicorn",
           "fastapi_doctor.demo.patient:app", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    print(f"$ {' '.join(cmd[0:1] + ['uvicorn'] + cmd[4:])}")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"http://127.0.0.1:{port}/healthy")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("fastapi-doctor demo: the patient did not start", file=sys.stderr)
                    return 2
                time.sleep(0.2)
        for path in ("/healthy", "/blocking", "/healthy", "/items/1", "/items/2"):
            status = _get(f"http://127.0.0.1:{port}{path}")
            print(f"GET {path} -> {status}")
        try:
            doc = fetch_doctor(f"http://127.0.0.1:{side}")
        except ReportError as exc:
            print(f"fastapi-doctor demo: {exc}", file=sys.stderr)
            return 2
        print()
        print(render_table(doc))
        return 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
