"""The Prometheus series budget: series per route by metric, and the agent's RSS, on bench/large_app.py.

The large app (``--routes`` routes on 50 routers, 5 dependencies per route, 8 middlewares) is started
twice, bare (``uvicorn``) and under the agent (``opentelemetry-instrument uvicorn``); every route is
requested once (the measured route's shape, ``/r{i}/items/7/{j}``), then the agent's side server's
``/metrics`` is read once and the process's RSS is taken in both.

    .venv/bin/python bench/series_budget.py --routes 5000      # the issue's app
    .venv/bin/python bench/series_budget.py --routes 200 --json

Prints, per metric family, its series (samples of the exposition: each bucket, ``_sum`` and ``_count``
is one series in Prometheus), how many of them carry ``http_route``, and the series per route; then
the RSS of both processes. docs/metrics.md ("Series budget") records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from harness import free_port  # noqa: E402
from large_app import HEADERS, ROUTERS  # noqa: E402


def paths(routes: int) -> list[str]:
    per_router = max(1, routes // ROUTERS)
    return [f"/r{i}/items/7/{j}" for i in range(min(ROUTERS, routes)) for j in range(per_router)]


class App:
    def __init__(self, routes: int, agent: bool) -> None:
        self.port, self.side_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
        env.update(BENCH_LARGE_ROUTES=str(routes), OTEL_EXPORTER_PROMETHEUS_PORT=str(self.side_port),
                   OTEL_SERVICE_NAME="large-app", PYTHONPATH=str(ROOT / "bench"))
        cmd = [sys.executable, "-m", "uvicorn", "large_app:app", "--port", str(self.port), "--no-access-log",
               "--log-level", "warning"]
        if agent:
            cmd = [str(BIN / "opentelemetry-instrument"), *cmd]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT / "bench", stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/docs", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the large app did not start")
                time.sleep(0.2)

    def hit_every_route(self, routes: int) -> None:
        def one(path: str) -> None:
            request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                             headers={k.decode(): v.decode() for k, v in HEADERS})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200, path

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, paths(routes)))

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.side_port}/metrics", timeout=60) as response:
            return response.read().decode()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def series_by_family(text: str) -> dict[str, dict[str, int]]:
    """family -> {"series", "per_route" (series with an http_route label)}."""
    out: dict[str, Counter[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("target_info",) or family.name.startswith(("python_", "process_virtual", "process_resident",
                                                                          "process_start", "process_cpu_seconds",
                                                                          "process_max_fds", "process_open_fds")):
            continue  # prometheus_client's own process and platform collectors, not the agent's
        counts = out.setdefault(family.name, Counter())
        for sample in family.samples:
            counts["series"] += 1
            counts["per_route"] += "http_route" in sample.labels
    return {name: dict(c) for name, c in out.items()}


def measure(routes: int) -> dict[str, object]:
    result: dict[str, object] = {"routes": len(paths(routes))}
    for agent in (False, True):
        app = App(routes, agent)
        try:
            app.hit_every_route(routes)
            text = app.metrics() if agent else ""
            time.sleep(1.0)  # the collection's garbage settles
            result["rss_mb_agent" if agent else "rss_mb_bare"] = round(app.rss_mb(), 1)
            if agent:
                result["families"] = series_by_family(text)
        finally:
            app.stop()
    families: dict[str, dict[str, int]] = result["families"]  # type: ignore[assignment]
    n = int(result["routes"])  # type: ignore[arg-type]
    result["series"] = sum(f["series"] for f in families.values())
    result["series_with_route"] = sum(f.get("per_route", 0) for f in families.values())
    result["series_per_route"] = round(result["series_with_route"] / n, 2)  # type: ignore[operator]
    result["rss_mb_more"] = round(result["rss_mb_agent"] - result["rss_mb_bare"], 1)  # type: ignore[operator]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.routes)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    n = result["routes"]
    families: dict[str, dict[str, int]] = result["families"]  # type: ignore[assignment]
    print(f"{n} routes, every one requested once\n")
    print(f"{'metric family':60} {'series':>8} {'with route':>10} {'per route':>9}")
    for name, f in sorted(families.items(), key=lambda kv: -kv[1]["series"]):
        print(f"{name:60} {f['series']:8} {f.get('per_route', 0):10} {f.get('per_route', 0) / n:9.2f}")
    print(f"\nseries: {result['series']:,}; with http_route: {result['series_with_route']:,} "
          f"({result['series_per_route']} per route)")
    print(f"RSS: bare {result['rss_mb_bare']} MB, agent {result['rss_mb_agent']} MB "
          f"(+{result['rss_mb_more']} MB)")


if __name__ == "__main__":
    main()
