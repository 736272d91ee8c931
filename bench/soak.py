"""Soak: the agent under a long mixed load while everything around it misbehaves (not run in CI).

    .venv/bin/python bench/soak.py                 # 30 minutes
    .venv/bin/python bench/soak.py --minutes 5     # the short run quoted in docs/reliability.md

What runs:

* ``opentelemetry-instrument gunicorn -w 2 -k uvicorn.workers.UvicornWorker bench.soak_app:app`` with
  every request sampled and OTLP export to a collector of this script;
* a mixed load from ``--clients`` threads (auth dependency + SQLite, async, an N+1 route, a large
  response, a route that blocks the loop now and then);
* the collector cycles through four behaviours, a phase each: up (the OTLP receiver of
  tests/harness.py), hanging (accepts, never answers), down (nothing listens), answering garbage
  (random bytes to every connection);
* at 1/3 and 2/3 of the run a worker is killed (SIGKILL: gunicorn starts a new one); at 1/2 gunicorn
  gets SIGHUP (a configuration reload: every worker is replaced).

Every ``--interval`` seconds it prints one line: time, collector phase, throughput, errors, RSS of each
process, log lines so far, findings per side server. At the end: the findings (problems) of the run,
and the lines as JSON with ``--json PATH``. ``SOAK_DEBUG=1`` prints why a side server did not answer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from harness import free_port, start_otlp_receiver  # noqa: E402

PATHS = ["/api/items/{n}", "/api/items/{n}", "/api/hello", "/api/hello", "/api/owners", "/api/report", "/api/slow"]
PHASES = ("up", "hanging", "down", "garbage")


class Collector:
    """An OTLP/gRPC collector on one port whose behaviour changes with ``become``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.phase = ""
        self._receiver: Any = None
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self.received_batches = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def become(self, phase: str) -> None:
        self._off()
        self.phase = phase
        if phase == "up":
            self._receiver = start_otlp_receiver(self.port)
        elif phase in ("hanging", "garbage"):
            self._listener = socket.socket()
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(("127.0.0.1", self.port))
            self._listener.listen(64)
            self._stop.clear()
            self._thread = threading.Thread(target=self._serve, args=(phase, self._listener), daemon=True)
            self._thread.start()

    def _serve(self, phase: str, listener: socket.socket) -> None:
        listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            self._conns.append(conn)
            if phase == "garbage":
                try:
                    conn.sendall(random.randbytes(4096))
                    conn.close()
                except OSError:
                    pass

    def _off(self) -> None:
        if self._receiver is not None:
            self.received_batches += len(self._receiver.trace_requests) + len(self._receiver.metric_requests)
            self._receiver.stop()
            self._receiver = None
        self._stop.set()
        if self._thread is not None:  # out of accept() first: the port is free only then
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def close(self) -> None:
        self._off()


class Load:
    """``clients`` threads sending the mixed requests; counts answers and errors."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.ok = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _run(self, seed: int) -> None:
        paths = itertools.cycle(PATHS[seed % len(PATHS):] + PATHS[: seed % len(PATHS)])
        n = seed
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                n += 1
                try:
                    ok = client.get(self.url + next(paths).format(n=n)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self._lock:
                    if ok:
                        self.ok += 1
                    else:
                        self.errors += 1

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, self.errors

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


def side_servers(base: int) -> dict[int, dict[str, Any]]:
    """pid -> {port, findings by root cause} of the side servers answering on base..base+8."""
    found = {}
    for port in range(base, base + 8):
        try:
            doc = httpx.get(f"http://127.0.0.1:{port}/doctor", timeout=2).json()
        except (httpx.HTTPError, ValueError) as exc:
            if os.environ.get("SOAK_DEBUG"):
                print(f"soak: side server {port}: {exc!r}", flush=True)
            continue
        causes: dict[str, int] = {}
        for f in doc["findings"]:
            causes[f["root_cause"]] = causes.get(f["root_cause"], 0) + 1
        found[doc["pid"]] = {"port": port, "findings": causes}
    return found


def processes(master: psutil.Process) -> dict[int, float]:
    """pid -> RSS in MB of the master and its workers."""
    out = {}
    for proc in [master, *master.children()]:
        try:
            out[proc.pid] = proc.memory_info().rss / 1e6
        except psutil.Error:
            pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="duration (default %(default)s)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between report lines")
    parser.add_argument("--clients", type=int, default=4, help="load threads (default %(default)s)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the lines and findings as JSON")
    args = parser.parse_args()
    duration = args.minutes * 60
    phase_s = max(duration / 8, args.interval)

    db = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastapi-doctor-soak-{os.getpid()}.sqlite"
    os.environ["SOAK_DB"] = str(db)
    from bench import soak_app

    soak_app.setup()
    collector = Collector()
    collector.become("up")
    port, side_port = free_port(), free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastapi-doctor-soak-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(side_port),
        "OTEL_SERVICE_NAME": "soak",
        "PYTHONPATH": str(ROOT),
        "SOAK_DB": str(db),
    })
    command = [str(BIN / "opentelemetry-instrument"), str(BIN / "gunicorn"), "-w", "2", "-k",
               "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
               "bench.soak_app:app"]
    log_file = open(log_path, "wb")
    gunicorn = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/api/hello", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    master = psutil.Process(gunicorn.pid)
    load = Load(url, args.clients)
    load.start()
    started = time.monotonic()
    events = {duration / 3: "kill a worker", duration / 2: "SIGHUP (reload)", 2 * duration / 3: "kill a worker"}
    lines: list[dict[str, Any]] = []
    findings: list[str] = []
    first_rss: dict[str, float] = {}
    last_ok, last_t = 0, started
    phase_index = 0
    print(f"soak: gunicorn -w 2 on {url}, side servers from {side_port}, collector {collector.endpoint}, "
          f"{args.minutes:g} min, log {log_path}", flush=True)
    next_line = started + args.interval
    try:
        while (now := time.monotonic()) - started < duration:
            elapsed = now - started
            for at, what in list(events.items()):
                if elapsed >= at:
                    del events[at]
                    workers = master.children()
                    if what.startswith("kill") and workers:
                        os.kill(workers[0].pid, signal.SIGKILL)
                    elif what.startswith("SIGHUP"):
                        os.kill(master.pid, signal.SIGHUP)
                    print(f"soak: {elapsed:7.0f}s event: {what}", flush=True)
            if int(elapsed // phase_s) != phase_index:
                phase_index = int(elapsed // phase_s)
                collector.become(PHASES[phase_index % len(PHASES)])
                print(f"soak: {elapsed:7.0f}s collector: {collector.phase}", flush=True)
            if now < next_line:
                time.sleep(min(1.0, next_line - now))
                continue
            next_line += args.interval
            ok, errors = load.counts()
            t = time.monotonic()
            rss = processes(master)
            servers = side_servers(side_port)
            logs = log_path.read_text(errors="replace").splitlines()
            line = {
                "t_s": round(t - started),
                "collector": collector.phase,
                "req_per_s": round((ok - last_ok) / (t - last_t), 1),
                "errors": errors,
                "rss_mb": {("master" if pid == master.pid else str(pid)): round(mb, 1) for pid, mb in rss.items()},
                "log_lines": len(logs),
                "agent_log_lines": sum("fastapi-doctor" in entry for entry in logs),
                "side_servers": {str(pid): s["findings"] for pid, s in servers.items()},
            }
            last_ok, last_t = ok, t
            lines.append(line)
            for name, mb in line["rss_mb"].items():
                first_rss.setdefault(name, mb)
            print("soak: " + json.dumps(line), flush=True)
    finally:
        load.stop()
        ok, errors = load.counts()
        os.killpg(gunicorn.pid, signal.SIGTERM)
        try:
            gunicorn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(gunicorn.pid, signal.SIGKILL)
        collector.close()
        log_file.close()

    logs = log_path.read_text(errors="replace")
    workers_alive = [ln for ln in lines[-2:] if len([k for k in ln["rss_mb"] if k != "master"]) >= 2]
    if not workers_alive:
        findings.append("fewer than two workers at the end")
    # One sample can fall right after a reload, while the new workers boot: two in a row is a finding.
    if any(not a["side_servers"] and not b["side_servers"] for a, b in zip(lines, lines[1:])):
        findings.append("two intervals in a row with no side server answering")
    if lines and any(len(ln["side_servers"]) < 2 for ln in lines[-2:]):
        findings.append("fewer than two side servers answering at the end")
    if errors > 0.01 * max(1, ok + errors):
        findings.append(f"{errors} failed requests ({errors / max(1, ok + errors):.1%})")
    if "Traceback" in logs:
        findings.append(f"{logs.count('Traceback')} tracebacks in the log")
    if "internal error" in logs:
        findings.append(f"{logs.count('internal error')} internal errors of the agent")
    steady = [ln for ln in lines if ln["t_s"] > duration / 10]
    if steady:
        rates = [ln["req_per_s"] for ln in steady]
        if min(rates) < 0.5 * (sum(rates) / len(rates)):
            findings.append(f"throughput fell to {min(rates)} req/s (mean {sum(rates) / len(rates):.0f})")
    master_growth = lines[-1]["rss_mb"].get("master", 0) - first_rss.get("master", 0) if lines else 0
    summary = {
        "minutes": args.minutes,
        "requests_ok": ok,
        "request_errors": errors,
        "mean_req_per_s": round(ok / max(1.0, duration), 1),
        "master_rss_growth_mb": round(master_growth, 1),
        "worker_rss_mb_last": {k: v for k, v in lines[-1]["rss_mb"].items() if k != "master"} if lines else {},
        "log_lines": len(logs.splitlines()),
        "agent_log_lines": sum("fastapi-doctor" in ln for ln in logs.splitlines()),
        "collector_batches_received": collector.received_batches,
        "findings": findings or ["none"],
        "command": " ".join(sys.argv),
    }
    print("soak: summary " + json.dumps(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "lines": lines}, indent=2) + "\n")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
