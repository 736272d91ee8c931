"""Helpers of startup_app.py, in their own module: findings must point at these lines (or not at all)."""

import time


def load_catalogue(seconds: float) -> dict[str, int]:
    time.sleep(seconds)  # reads a file synchronously, once at start-up
    return {"items": 3}


def load_tax_tables(seconds: float) -> dict[str, float]:
    time.sleep(seconds)  # once, on first use
    return {"fr": 0.2, "de": 0.19}


def write_export(seconds: float) -> str:
    time.sleep(seconds)  # EXPORT-SLEEP: every call
    return "orders.csv"
