"""Overhead benchmark: the same app bare, under the stock ``opentelemetry-instrument`` (with
opentelemetry-distro) and under fastapi-doctor, started in alternation (A B C A B C …).

    make bench                      # full run, peers included (about 30 minutes)
    make bench BENCH_ARGS=--quick   # a few seconds per part: checks that it works, measures nothing
    make bench BENCH_ARGS="--quick --peers"   # the same, with the peers

Peers (``peers.py``): prometheus-fastapi-instrumentator, Logfire and Sentry's SDK on the same app in
the same alternating rounds, each in a venv of its own with the same uvicorn, uvloop and httptools
(on by default in the full run; ``--peers``/``--no-peers``).

Server pinned to core 0, load generator to core 1 (taskset, when the machine has two cores).
Both instrumented runs export OTLP/gRPC to the same local receiver. Then p99 at half the bare
capacity (open loop, after a warm-up), RSS growth over 200k requests on 1,000 raw paths, and what
each detector costs (``detector_cost.py``, in process). Prints a table and writes JSON under
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import free_port, start_otlp_receiver  # noqa: E402

import detector_cost  # noqa: E402 - bench/ is this script's directory
import peers  # noqa: E402

BIN = Path(sys.executable).parent
STOCK_OTEL = ROOT / ".cache" / "stock-otel"
WARM_S = 20.0  # open-loop warm-up before the p99 is measured (see p99_at_half_capacity)
ROUTES = {"hello": "/hello", "deps_db_mw": "/items/7"}


@dataclass
class Run:
    config: str
    route: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    rss_mb: float
    requests: int


@dataclass
class Server:
    config: str
    env: dict[str, str]
    python: str = sys.executable  # a peer's venv
    module: str = "app:app"
    ready_path: str = "/hello"
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    side_port: int = 0
    log: Path = field(default_factory=lambda: Path(tempfile.mktemp(prefix="bench-", suffix=".log")))

    def start(self, cpu: str | None) -> None:
        self.port, self.side_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
        env.update(self.env)
        env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(self.side_port)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"), env.get("PYTHONPATH")]))
        module = "peer_app:app" if "BENCH_PEER" in self.env else self.module
        cmd = [self.python, "-m", "uvicorn", module, "--port", str(self.port), "--no-access-log",
               "--log-level", "warning"]
        if self.config in ("stock", "doctor"):
            cmd = [str(BIN / "opentelemetry-instrument"), *cmd]
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT / "bench", stdout=self._logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.config} did not start:\n{self.log.read_text()}")
                time.sleep(0.1)

    def process(self) -> psutil.Process:
        assert self.proc is not None
        parent = psutil.Process(self.proc.pid)
        # Under taskset/opentelemetry-instrument the server replaces the process (exec): same pid.
        return parent

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._logf.close()


def configs(receiver_endpoint: str, peer_names: tuple[str, ...] = (), sentry_dsn: str = "") -> dict[str, dict[str, str]]:
    stock = {
        "PYTHONPATH": str(STOCK_OTEL),
        "OTEL_PYTHON_DISTRO": "distro",
        "OTEL_PYTHON_CONFIGURATOR": "configurator",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_endpoint,
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
    }
    doctor = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver_endpoint, "OTEL_SERVICE_NAME": "bench"}
    out = {"bare": {}, "stock": stock, "doctor": doctor}
    for name in peer_names:
        out[name] = {"BENCH_PEER": name, "BENCH_SENTRY_DSN": sentry_dsn}
    return out


_WRK_LAT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: float, cpu: str | None, script: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[float, float, float, int]:
    """(req/s, p50 ms, p99 ms, requests) from wrk -t1 -c32; a Python client when wrk is missing."""
    if shutil.which("wrk") is None:
        return asyncio.run(_python_load(url, seconds, headers=headers))
    cmd = ["wrk", "-t1", "-c32", f"-d{max(1, round(seconds))}s", "--latency", url]
    if script:
        cmd[1:1] = ["-s", script]
    for name, value in headers:
        cmd[1:1] = ["-H", f"{name.decode()}: {value.decode()}"]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    lat = {m.group(1): float(m.group(2)) * _UNIT[m.group(3)] for m in _WRK_LAT.finditer(out)}
    return rps, lat.get("50", float("nan")), lat.get("99", float("nan")), total


async def _python_load(url: str, seconds: float, connections: int = 32,
                       headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[float, float, float, int]:
    host, port, path = _split(url)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    extra = "".join(f"{name.decode()}: {value.decode()}\r\n" for name, value in headers)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(request)
            await _read_response(reader)
            latencies.append((time.perf_counter() - t0) * 1000)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return len(latencies) / elapsed, _pct(latencies, 50), _pct(latencies, 99), len(latencies)


def _split(url: str) -> tuple[str, int, str]:
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m, url
    return m.group(1), int(m.group(2)), m.group(3)


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"content-length:\s*(\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


async def open_loop_p99(url: str, rate: float, seconds: float, connections: int = 32) -> float:
    """p99 latency (ms) at a fixed request rate, measured from each request's scheduled time."""
    host, port, path = _split(url)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while (scheduled := await queue.get()) is not None:
            writer.write(request)
            await _read_response(reader)
            latencies.append((time.perf_counter() - scheduled) * 1000)
        writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(scheduled)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    latencies.sort()
    return _pct(latencies, 99)


def measure(server: Server, route: str, seconds: float, cpu: str | None) -> Run:
    url = f"http://127.0.0.1:{server.port}{ROUTES[route]}"
    wrk(url, max(1.0, seconds / 4), cpu)  # warm-up
    proc = server.process()
    before = proc.cpu_times()
    rps, p50, p99, total = wrk(url, seconds, cpu)
    after = proc.cpu_times()
    cpu_s = (after.user - before.user) + (after.system - before.system)
    rss = proc.memory_info().rss / 2**20
    return Run(server.config, route, rps, p50, p99, cpu_s / max(total, 1) * 1e6, rss, total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds per part (checks that it works)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--skip-detectors", action="store_true", help="skip the per-detector cost runs")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the peers (peers.py); default: on, off with --quick")
    parser.add_argument("--large-only", action="store_true",
                        help="only the large app's part (1 route against 1,000 routes, bare and fastapi-doctor)")
    args = parser.parse_args()
    with_peers = (not args.quick) if args.peers is None else args.peers
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    server_cpu, load_cpu = ("0", "1") if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else (None, None)
    if not (STOCK_OTEL / "opentelemetry" / "distro").is_dir():
        print(f"bench: opentelemetry-distro is missing in {STOCK_OTEL}; run `make bench`", file=sys.stderr)
        return 2

    if args.large_only:
        receiver = start_otlp_receiver()
        try:
            large = large_app_ratios(configs(receiver.endpoint), args.rounds, args.seconds, server_cpu, load_cpu)
        finally:
            receiver.stop()
        print()
        print(render_large(large))
        return 0

    peer_python = {name: str(peers.ensure(name)) for name in (peers.PEERS if with_peers else ())}
    receiver = start_otlp_receiver()
    sink = peers.Sink()
    env_by_config = configs(receiver.endpoint, tuple(peer_python), sink.dsn)
    runs: list[Run] = []
    try:
        for round_no in range(args.rounds):
            for config, env in env_by_config.items():
                server = Server(config, env, peer_python.get(config, sys.executable))
                server.start(server_cpu)
                try:
                    for route in ROUTES:
                        run = measure(server, route, args.seconds, load_cpu)
                        runs.append(run)
                        print(f"round {round_no + 1}/{args.rounds} {config:14} {route:11} {run.rps:8.0f} req/s "
                              f"p99 {run.p99_ms:6.2f} ms  {run.cpu_us_per_req:6.1f} us/req", flush=True)
                finally:
                    server.stop()

        summary = summarise(runs)
        bare_hello = summary[("bare", "hello")]["rps"]
        latency = p99_at_half_capacity(env_by_config, bare_hello / 2, server_cpu, load_cpu, args.quick,
                                       1 if args.quick else 3)

        rss = rss_growth(env_by_config["doctor"], server_cpu, load_cpu, 20_000 if args.quick else 200_000)

        large = large_app_ratios(env_by_config, args.rounds, args.seconds, server_cpu, load_cpu)

        detectors: dict[str, dict[str, float]] = {}
        if not args.skip_detectors:
            detectors = detector_cost.measure(quick=args.quick)
    finally:
        receiver.stop()
        sink.stop()

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pinned": server_cpu is not None},
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "quick": args.quick},
        "summary": {f"{c}/{r}": v for (c, r), v in summary.items()},
        "ratios": ratios(summary),
        "p99_at_half_bare_capacity_ms": latency,
        "rss_growth": rss,
        "large_app": large,
        "detector_cost_us_per_request": detectors,  # best CPU us/request per config, in process
        "runs": [asdict(r) for r in runs],
    }
    print()
    print(render(report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "quick.json" if args.quick else time.strftime("bench-%Y%m%d-%H%M%S.json")
    (out / name).write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out / name}")
    return 0


LARGE_APPS = {"large_1_route": "1", "large_1000_routes": "1000"}


def large_app_ratios(env_by_config: dict[str, dict[str, str]], rounds: int, seconds: float,
                     server_cpu: str | None, load_cpu: str | None) -> dict[str, dict[str, float]]:
    """Flat with the app's size: bare and fastapi-doctor in alternation on the same route of
    ``large_app.py`` built with 1 route and with 1,000 (8 middlewares, 5 dependencies per route);
    median req/s of each and fastapi-doctor's ratio to bare for each size."""
    import large_app  # builds the app once here too; only its request's path and headers are used

    samples: dict[tuple[str, str], list[float]] = {}
    cpu_samples: dict[tuple[str, str], list[float]] = {}
    for round_no in range(rounds):
        for size, routes in LARGE_APPS.items():
            for config in ("bare", "doctor"):
                env = {**env_by_config[config], "BENCH_LARGE_ROUTES": routes}
                server = Server(config, env, module="large_app:app", ready_path="/docs")
                server.start(server_cpu)
                try:
                    url = f"http://127.0.0.1:{server.port}{large_app.MEASURED_PATH}"
                    wrk(url, max(1.0, seconds / 4), load_cpu, headers=tuple(large_app.HEADERS))  # warm-up
                    proc = server.process()
                    before = proc.cpu_times()
                    rps, _, _, total = wrk(url, seconds, load_cpu, headers=tuple(large_app.HEADERS))
                    after = proc.cpu_times()
                finally:
                    server.stop()
                cpu_us = ((after.user - before.user) + (after.system - before.system)) / max(total, 1) * 1e6
                samples.setdefault((size, config), []).append(rps)
                cpu_samples.setdefault((size, config), []).append(cpu_us)
                print(f"round {round_no + 1}/{rounds} {config:14} {size:17} {rps:8.0f} req/s {cpu_us:8.1f} us/req",
                      flush=True)
    out: dict[str, dict[str, float]] = {}
    for size in LARGE_APPS:
        bare, doctor = (statistics.median(samples[(size, c)]) for c in ("bare", "doctor"))
        bare_cpu, doctor_cpu = (statistics.median(cpu_samples[(size, c)]) for c in ("bare", "doctor"))
        # CPU per request moves less than req/s when a neighbour takes the core: the same ratio by cost.
        out[size] = {"bare_rps": bare, "doctor_rps": doctor, "doctor_to_bare": doctor / bare,
                     "bare_cpu_us_per_req": bare_cpu, "doctor_cpu_us_per_req": doctor_cpu,
                     "doctor_to_bare_by_cpu": bare_cpu / doctor_cpu}
    return out


def p99_at_half_capacity(env_by_config: dict[str, dict[str, str]], rate: float, server_cpu: str | None,
                         load_cpu: str | None, quick: bool, rounds: int) -> dict[str, float]:
    """Median over alternating rounds of the open-loop p99 (ms) at ``rate``: bare, fastapi-doctor,
    and fastapi-doctor with FASTAPI_DOCTOR_GC_FREEZE=false (what the freeze is worth).

    Each server first takes the same rate for WARM_S: the tail at this load is the garbage
    collector's full collections (tens of ms each), which start once start-up's objects have filled
    the older generations; measured right after start-up, a server has not had its first ones yet.
    """
    cpus = os.sched_getaffinity(0)
    if load_cpu is not None:
        os.sched_setaffinity(0, {int(load_cpu)})  # the Python load generator runs in this process
    warm_s, measure_s = (1.0, 2.0) if quick else (WARM_S, 10.0)
    envs = {
        "bare": env_by_config["bare"],
        "doctor": env_by_config["doctor"],
        "doctor_gc_freeze_off": {**env_by_config["doctor"], "FASTAPI_DOCTOR_GC_FREEZE": "false"},
    }
    samples: dict[str, list[float]] = {config: [] for config in envs}
    for _ in range(rounds):
        for config, env in envs.items():
            server = Server(config, env)
            server.start(server_cpu)
            try:
                url = f"http://127.0.0.1:{server.port}/hello"
                asyncio.run(open_loop_p99(url, rate, warm_s))
                samples[config].append(asyncio.run(open_loop_p99(url, rate, measure_s)))
            finally:
                server.stop()
    os.sched_setaffinity(0, cpus)
    return {config: statistics.median(values) for config, values in samples.items()} | {
        f"{config}_rounds": values for config, values in samples.items()
    }


def summarise(runs: list[Run]) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key in sorted({(r.config, r.route) for r in runs}):
        mine = [r for r in runs if (r.config, r.route) == key]
        out[key] = {
            "rps": statistics.median(r.rps for r in mine),
            "p50_ms": statistics.median(r.p50_ms for r in mine),
            "p99_ms": statistics.median(r.p99_ms for r in mine),
            "cpu_us_per_req": statistics.median(r.cpu_us_per_req for r in mine),
            "rss_mb": statistics.median(r.rss_mb for r in mine),
        }
    return out


def ratios(summary: dict[tuple[str, str], dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every configuration against bare, and fastapi-doctor against every other one."""
    out = {}
    for route in ROUTES:
        rps = {c: v["rps"] for (c, r), v in summary.items() if r == route}
        mine = {f"{c}_to_bare": rps[c] / rps["bare"] for c in rps if c != "bare"}
        mine.update({f"doctor_to_{c}": rps["doctor"] / rps[c] for c in rps if c not in ("bare", "doctor")})
        out[route] = mine
    return out


def rss_growth(env: dict[str, str], server_cpu: str | None, load_cpu: str | None, requests: int) -> dict[str, float]:
    """RSS before and after ``requests`` spread over 1,000 distinct raw paths (one route template)."""
    script = Path(tempfile.mktemp(suffix=".lua"))
    script.write_text('i = 0\nrequest = function()\n  i = (i + 1) % 1000\n'
                      '  return wrk.format("GET", "/raw/p" .. i)\nend\n')
    server = Server("doctor", env)
    server.start(server_cpu)
    try:
        url = f"http://127.0.0.1:{server.port}/raw/p0"
        wrk(url, 2, load_cpu, str(script))  # warm-up: every path seen once
        proc = server.process()
        before = proc.memory_info().rss
        sent = 0
        while sent < requests:
            rps, _, _, total = wrk(url, min(30.0, max(1.0, (requests - sent) / 3000)), load_cpu, str(script))
            sent += total
        after = proc.memory_info().rss
    finally:
        server.stop()
        script.unlink(missing_ok=True)
    return {"requests": sent, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
            "growth_mb": (after - before) / 2**20}


def render(report: dict) -> str:
    lines = ["config         route        req/s    p50 ms   p99 ms   CPU us/req   RSS MB"]
    for key, v in report["summary"].items():
        config, route = key.split("/")
        lines.append(f"{config:14} {route:11} {v['rps']:7.0f}  {v['p50_ms']:7.2f}  {v['p99_ms']:7.2f}  "
                     f"{v['cpu_us_per_req']:10.1f}  {v['rss_mb']:7.1f}")
    lines.append("")
    for route, r in report["ratios"].items():
        lines.append(f"{route:11} " + "   ".join(f"{k.replace('_to_', '/')} {v:.2f}x" for k, v in r.items()))
    lat = report["p99_at_half_bare_capacity_ms"]
    if lat:
        lines.append(f"p99 at half the bare capacity: bare {lat['bare']:.2f} ms, doctor {lat['doctor']:.2f} ms "
                     f"({lat['doctor'] / lat['bare']:.2f}x)")
        if "doctor_gc_freeze_off" in lat:
            off = lat["doctor_gc_freeze_off"]
            lines.append(f"  doctor with FASTAPI_DOCTOR_GC_FREEZE=false {off:.2f} ms ({off / lat['bare']:.2f}x)")
    rss = report["rss_growth"]
    lines.append(f"RSS growth over {rss['requests']:,} requests on 1,000 raw paths: {rss['growth_mb']:.1f} MB")
    lines.append(render_large(report["large_app"]))
    if report["detector_cost_us_per_request"]:
        lines.append("")
        lines.append(detector_cost.render(report["detector_cost_us_per_request"]))
    return "\n".join(lines)


def render_large(large: dict[str, dict[str, float]]) -> str:
    one, many = (large[size]["doctor_to_bare"] for size in LARGE_APPS)
    one_cpu, many_cpu = (large[size]["doctor_to_bare_by_cpu"] for size in LARGE_APPS)
    return ("large app, same route: " + "   ".join(
        f"{size} doctor/bare {v['doctor_to_bare']:.2f}x ({v['doctor_rps']:.0f} / {v['bare_rps']:.0f} req/s), "
        f"by CPU {v['doctor_to_bare_by_cpu']:.2f}x ({v['doctor_cpu_us_per_req']:.0f} / {v['bare_cpu_us_per_req']:.0f} us/req)"
        for size, v in large.items())
        + f"   difference {100 * (many - one):+.1f} points, by CPU {100 * (many_cpu - one_cpu):+.1f} points")


if __name__ == "__main__":
    sys.exit(main())
