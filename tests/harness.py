"""Real processes for tests: an app under a real uvicorn (optionally under ``opentelemetry-instrument``)
and a real OTLP/gRPC receiver that keeps what it receives."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or raise AssertionError at the timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def _attrs(kvs: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = getattr(v, kind) if kind else None
    return out


@dataclass
class ReceivedSpan:
    name: str
    scope: str
    attributes: dict[str, Any]
    trace_id: str
    span_id: str
    parent_span_id: str
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]


@dataclass
class OTLPReceiver:
    """A grpcio server implementing OTLP's Trace, Metrics and Logs services."""

    port: int
    trace_requests: list[Any] = field(default_factory=list)
    metric_requests: list[Any] = field(default_factory=list)
    log_requests: list[Any] = field(default_factory=list)
    server: Any = None
    # When set, every call waits this long before answering (a collector that hangs).
    delay_s: float = 0.0
    # Calls received and not yet answered.
    in_flight: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[ReceivedSpan]:
        out = []
        for req in list(self.trace_requests):
            for rs in req.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            ReceivedSpan(
                                s.name,
                                ss.scope.name,
                                _attrs(s.attributes),
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                [(e.name, _attrs(e.attributes)) for e in s.events],
                                resource,
                            )
                        )
        return out

    def metric_names(self) -> set[str]:
        names = set()
        for req in list(self.metric_requests):
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        names.add(m.name)
        return names

    def metric_points(self, name: str) -> list[dict[str, Any]]:
        """Attributes of every data point received for metric ``name``."""
        points = []
        for req in list(self.metric_requests):
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name != name:
                            continue
                        kind = m.WhichOneof("data")
                        for p in getattr(m, kind).data_points:
                            points.append(_attrs(p.attributes))
        return points

    def raw_bytes(self) -> bytes:
        """Everything received, serialised (for secret scans)."""
        return b"".join(r.SerializeToString() for r in [*self.trace_requests, *self.metric_requests, *self.log_requests])

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)
            self.server = None


def start_otlp_receiver(port: int | None = None) -> OTLPReceiver:
    receiver = OTLPReceiver(port or free_port())

    counting = threading.Lock()

    def wait() -> None:
        if receiver.delay_s:
            with counting:
                receiver.in_flight += 1
            try:
                time.sleep(receiver.delay_s)
            finally:
                with counting:
                    receiver.in_flight -= 1

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            wait()
            receiver.trace_requests.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            wait()
            receiver.metric_requests.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            wait()
            receiver.log_requests.append(request)
            return logs_service_pb2.ExportLogsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    server.add_insecure_port(f"127.0.0.1:{receiver.port}")
    server.start()
    receiver.server = server
    return receiver


class AppProcess:
    """A real server process running a test app, stopped (with its whole process group) by ``stop``."""

    def __init__(
        self,
        app: str,
        *,
        env: dict[str, str] | None = None,
        wrapper: bool = True,
        server_args: list[str] | None = None,
        command: list[str] | None = None,
        cwd: Path = APPS,
        ready_path: str = "/",
    ) -> None:
        self.port = free_port()
        self.side_port = free_port()
        self.app = app
        self.cwd = cwd
        self.ready_path = ready_path
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastapi-doctor-test-{self.port}.log"
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))
        }
        full_env.update(
            {
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(self.side_port),
                "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
                "OTEL_SERVICE_NAME": "test-app",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(cwd),
            }
        )
        full_env.update(env or {})
        self.env = full_env
        # A port probed free can be taken by another process (a suite beside a benchmark) before the
        # server binds it: the server then exits, and another process answers on it. A command built here
        # is started again on new ports; a test's own command (gunicorn -b app.port) is not.
        self._uvicorn_args = None if command is not None else (app, wrapper, list(server_args or []))
        self.command = command if command is not None else self._uvicorn_command()
        self.proc: subprocess.Popen[bytes] | None = None

    def _uvicorn_command(self) -> list[str]:
        assert self._uvicorn_args is not None
        app, wrapper, server_args = self._uvicorn_args
        command = [str(BIN / "python"), "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port),
                   "--no-access-log", *server_args]
        return [str(BIN / "opentelemetry-instrument"), *command] if wrapper else command

    def _new_ports(self) -> None:
        self.port, self.side_port = free_port(), free_port()
        self.env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(self.side_port)
        self.command = self._uvicorn_command()

    def _listens(self) -> bool:
        """The server process (or a child of it) listens on ``self.port``: it is ours that answers."""
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            for proc in (root, *root.children(recursive=True)):
                connections = getattr(proc, "net_connections", None) or proc.connections
                if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                       for c in connections(kind="tcp")):
                    return True
        except psutil.Error:
            pass
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def side_url(self) -> str:
        return f"http://127.0.0.1:{self.side_port}"

    def start(self, timeout: float = 20.0) -> AppProcess:
        for attempt in range(3):
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

            def ready() -> bool | str:
                if self.proc is not None and self.proc.poll() is not None:
                    return "exited"
                httpx.get(self.url + self.ready_path, timeout=1.0)
                if not self._listens():
                    raise httpx.ConnectError("another process answers on the port")  # retried by wait_until
                return True

            try:
                outcome = wait_until(ready, timeout=timeout, interval=0.1)
            except BaseException:
                self.stop()
                raise
            if outcome is True:
                return self
            code, logs = self.proc.returncode, self.logs()
            self.stop()
            if "address already in use" not in logs or self._uvicorn_args is None or attempt == 2:
                raise RuntimeError(f"server exited with {code}:\n{logs}")
            self._new_ports()
        return self

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def doctor(self, **kwargs: Any) -> dict[str, Any]:
        response = httpx.get(self.side_url + "/doctor", timeout=5.0, **kwargs)
        response.raise_for_status()
        return response.json()

    def findings(self, root_cause: str | None = None) -> list[dict[str, Any]]:
        found = self.doctor()["findings"]
        return [f for f in found if root_cause is None or f["root_cause"] == root_cause]

    def metrics_text(self) -> str:
        return httpx.get(self.side_url + "/metrics", timeout=5.0).text

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        try:  # children left in the group (workers) go too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode


def side_servers(base: int, span: int = 12) -> dict[int, dict[str, Any]]:
    """pid -> {"port", "doctor"} of every side server answering on base..base+span (a prefork server's
    workers take the next free ports from the base one)."""
    found = {}
    for port in range(base, base + span):
        try:
            doc = httpx.get(f"http://127.0.0.1:{port}/doctor", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            continue
        found[doc["pid"]] = {"port": port, "doctor": doc}
    return found


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    total = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + sample.value
    return total


def concurrent_get(url: str, n: int, concurrency: int = 8, timeout: float = 30.0, **kwargs: Any) -> list[httpx.Response]:
    """``n`` GET requests with ``concurrency`` in flight, from threads (a real concurrent client)."""
    results: list[httpx.Response] = []
    lock = threading.Lock()
    with httpx.Client(timeout=timeout) as client, futures.ThreadPoolExecutor(concurrency) as pool:
        def one(_: int) -> None:
            r = client.get(url, **kwargs)
            with lock:
                results.append(r)

        list(pool.map(one, range(n)))
    return results


def wrk_get(urls: list[str], headers: dict[str, str], connections: int, seconds: int) -> int:
    """``connections`` clients in all, split over ``urls`` (one ``wrk`` per URL, all at once), for ``seconds``:
    the requests sent, every one answered with a 2xx."""
    runs = [subprocess.Popen(["wrk", "-t1", f"-c{connections // len(urls)}", f"-d{seconds}s", "--timeout", "10s",
                              *(arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")), url],
                             stdout=subprocess.PIPE, text=True) for url in urls]
    sent = 0
    for run in runs:
        out, _ = run.communicate(timeout=seconds + 30)
        assert run.returncode == 0 and "Non-2xx" not in out, out
        sent += int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return sent
