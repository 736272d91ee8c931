"""The side server: /metrics, /doctor, /healthz and the doctor page, on its own daemon thread.

Never the app's port, never the app's event loop. A slow or hostile client ties up one of this
server's threads for at most ``REQUEST_TIMEOUT_S``; the app does not notice.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from fastapi_doctor import containment
from fastapi_doctor.config import ROOT_CAUSES

_log = logging.getLogger("fastapi_doctor")

REQUEST_TIMEOUT_S = 10.0
# The OpenTelemetry Prometheus collector is not safe to run twice at once (two collections can swap
# their data): /metrics and the doctor page's history read the registry one at a time.
_collect_lock = threading.Lock()
MAX_CONCURRENT_REQUESTS = 16
# A worker of a prefork server whose port is taken by a sibling takes the next free one of these.
MAX_WORKER_PORTS = 64


class DoctorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 32

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: SideApp) -> None:
        self.side_app = app
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Bound the threads a flood of clients can take.
        if not self.slots.acquire(timeout=1.0):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, (ConnectionError, TimeoutError)):
            containment.report("side server", exc)


class SideApp:
    """What the side server publishes. Built by the agent; reads only."""

    def __init__(
        self,
        *,
        doctor: Callable[[], dict[str, Any]],
        page: Callable[[dict[str, Any]], str],
        token: str | None,
        protect_metrics: bool = False,
        registry: CollectorRegistry = REGISTRY,
        profile: Callable[[dict[str, list[str]]], tuple[int, str, bytes]] | None = None,
    ) -> None:
        self.doctor = doctor
        self.page = page
        self.token = token
        self.protect_metrics = protect_metrics
        self.registry = registry
        self.profile = profile

    def authorized(self, header: str | None, path: str) -> bool:
        if self.token is None or (path == "/metrics" and not self.protect_metrics) or path == "/healthz":
            return True
        scheme, _, credentials = (header or "").partition(" ")
        # The scheme is case-insensitive (RFC 9110 11.1); exactly one space, no other whitespace.
        if scheme.lower() != "bearer" or not credentials or any(c.isspace() for c in credentials):
            return False
        return hmac.compare_digest(credentials.encode("utf-8", "replace"), self.token.encode("utf-8"))


class _Handler(BaseHTTPRequestHandler):
    server: DoctorHTTPServer
    timeout = REQUEST_TIMEOUT_S
    server_version = "fastapi-doctor"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # no access log on the app's stderr
        pass

    def do_GET(self) -> None:
        app = self.server.side_app
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        if not app.authorized(self.headers.get("Authorization"), path):
            self._send(401, "application/json", b'{"error": "unauthorized"}\n', {"WWW-Authenticate": "Bearer"})
            return
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept"))
                with _collect_lock:
                    body = encoder(app.registry)
                self._send(200, content_type, body)
            elif path == "/doctor":
                body = json.dumps(app.doctor(), indent=2).encode()
                self._send(200, "application/json", body + b"\n")
            elif path.startswith("/runbooks/") and path[10:].removesuffix(".md") in ROOT_CAUSES:
                self._send(200, "text/markdown; charset=utf-8", _runbook(path[10:].removesuffix(".md")))
            elif path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", app.page(app.doctor()).encode())
            elif path == "/profile" and app.profile is not None:
                status, content_type, body = app.profile(parse_qs(url.query))
                self._send(status, content_type, body)
            else:
                self._send(404, "application/json", b'{"error": "not found"}\n')
        except (ConnectionError, TimeoutError):
            return  # the client went away (a slow or hostile client): not an error of the agent
        except Exception as exc:
            containment.report("side server", exc)
            self._send(500, "application/json", b'{"error": "internal error"}\n')

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def collect_metrics(registry: CollectorRegistry = REGISTRY) -> list[Any]:
    """The registry's metric families, read under the lock /metrics takes."""
    with _collect_lock:
        return list(registry.collect())


def _runbook(root_cause: str) -> bytes:
    # The runbooks of docs/runbooks/, shipped in the package (agent/fastapi_doctor/runbooks).
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runbooks", f"{root_cause}.md")
    with open(path, "rb") as f:
        return f.read()


class SideServer:
    """Handle on the running server: ``stop()`` takes it back."""

    def __init__(self, server: DoctorHTTPServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _bind(app: SideApp, host: str, port: int, worker: bool) -> DoctorHTTPServer:
    """Bind ``port``; a worker (``worker=True``) whose port is taken tries the next ones."""
    last = port + (MAX_WORKER_PORTS if worker and port else 0)
    while True:
        try:
            return DoctorHTTPServer((host, port), _Handler, app)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port >= min(last, 65535):
                raise
            port += 1


def start(app: SideApp, host: str, port: int, worker: bool = False) -> SideServer | None:
    """Start the side server; on a bind error log one clear line and return None (the app serves on).

    ``worker``: this process is one of several workers of a prefork server (see docs/reliability.md);
    when ``port`` is taken (by a sibling) it takes the next free port up to ``MAX_WORKER_PORTS`` above.
    """
    try:
        server = _bind(app, host, port, worker)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else str(exc)
        _log.error(
            "fastapi-doctor: side server cannot listen on %s:%s (OTEL_EXPORTER_PROMETHEUS_HOST=%s, "
            "OTEL_EXPORTER_PROMETHEUS_PORT=%s): %s. The app keeps serving without /metrics and /doctor; "
            "set OTEL_EXPORTER_PROMETHEUS_PORT to a free port.",
            host, port, host, port, reason,
        )
        return None
    thread = threading.Thread(target=server.serve_forever, name="fastapi-doctor-server", daemon=True)
    thread.start()
    _log.info("fastapi-doctor: findings at http://%s:%s/ (metrics at /metrics)", host, server.server_address[1])
    return SideServer(server, thread)


def close_inherited(side: SideServer) -> None:
    """In a forked child: release the parent's listening socket (its serving thread did not survive
    the fork, so ``stop()`` would wait for it forever)."""
    try:
        side.server.socket.close()
    except OSError:
        pass
