"""Helpers of the loop test app, in their own module: a finding must point at these lines."""

import time


def fetch_report(seconds: float) -> str:
    time.sleep(seconds)  # BLOCKING-SLEEP
    return "report"


def checksum(seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    h = 0
    while time.perf_counter() < deadline:
        for i in range(20000):
            h = (h * 31 + i) % 1000003  # CPU-LOOP
    return h


def audit_trail(seconds: float) -> None:
    time.sleep(seconds)  # MIDDLEWARE-SLEEP


def render_pdf(seconds: float) -> bytes:
    time.sleep(seconds)  # THREAD-SLEEP
    return b"%PDF"
