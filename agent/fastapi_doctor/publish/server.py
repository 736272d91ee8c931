"""The side server: /metrics, /doctor, /healthz and the doctor page, on its own daemon threads.

Never the app's port, never the app's event loop. One thread reads the requests of every client
without blocking (``selectors``) and hands each complete request to a few handler threads, so a slow or
idle client costs a socket, not a thread:

* a request's head (request line and headers) must arrive within ``HEAD_DEADLINE_S`` of the
  connection, else the connection is closed; the answer is written within ``WRITE_TIMEOUT_S``;
* at most ``MAX_PENDING_PER_CLIENT`` connections of one client address wait for their head: the
  next one closes that client's oldest (and ``MAX_PENDING`` of all clients together), so a client that
  opens hundreds of idle connections never holds the port, and a scrape that sends its request at
  once is answered while that goes on;
* a head larger than ``MAX_HEAD_BYTES`` gets 431; a body is never read.
"""

from __future__ import annotations

import errno
import hmac
import io
import ipaddress
import json
import logging
import queue
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from fastapi_doctor import containment
from fastapi_doctor.config import ROOT_CAUSES
from fastapi_doctor.publish import runbooks

_log = logging.getLogger("fastapi_doctor")

HEAD_DEADLINE_S = 5.0
WRITE_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 65536
MAX_PENDING_PER_CLIENT = 8
MAX_PENDING = 256
MAX_CONCURRENT_REQUESTS = 16  # handler threads, created when needed
MAX_QUEUED_REQUESTS = 64  # complete requests waiting for a handler; beyond it they are closed
# The OpenTelemetry Prometheus collector is not safe to run twice at once (two collections can swap
# their data): /metrics and the doctor page's history read the registry one at a time.
_collect_lock = threading.Lock()
# A worker of a prefork server whose port is taken by a sibling takes the next free one of these.
MAX_WORKER_PORTS = 64

_HEAD_TOO_LARGE = b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Pending:
    __slots__ = ("sock", "client", "deadline", "head")

    def __init__(self, sock: socket.socket, client: str) -> None:
        self.sock = sock
        self.client = client
        self.deadline = time.monotonic() + HEAD_DEADLINE_S
        self.head = bytearray()


class DoctorHTTPServer:
    """The listening socket, the reading loop (``serve_forever``) and the handler threads."""

    def __init__(self, address: tuple[str, int], app: SideApp) -> None:
        self.side_app = app
        host, port = address
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(sockaddr)
            self.socket.listen(128)
            self.socket.setblocking(False)
        except BaseException:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._pending: OrderedDict[socket.socket, _Pending] = OrderedDict()  # oldest first
        self._requests: queue.Queue[tuple[socket.socket, Any, bytes] | None] = queue.Queue(MAX_QUEUED_REQUESTS)
        self._handlers: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()

    # -- the reading loop ------------------------------------------------------------------------

    def serve_forever(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                deadline = next(iter(self._pending.values())).deadline if self._pending else None
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.data == "accept":
                        self._accept(selector)
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    else:
                        self._read(selector, key.data)
                now = time.monotonic()
                while self._pending:  # pending are in arrival order: the oldest expire first
                    oldest = next(iter(self._pending.values()))
                    if oldest.deadline > now:
                        break
                    self._drop(selector, oldest)
        except Exception as exc:
            containment.report("side server", exc)
        finally:
            for pending in list(self._pending.values()):
                self._drop(selector, pending)
            selector.close()
            self._stopped.set()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, or the connection was reset before accept
                return
            sock.setblocking(False)
            client = str(address[0]) if isinstance(address, tuple) else ""
            mine = [p for p in self._pending.values() if p.client == client]
            if len(mine) >= MAX_PENDING_PER_CLIENT:
                self._drop(selector, mine[0])  # this client's oldest connection still sending its head
            if len(self._pending) >= MAX_PENDING:
                self._drop(selector, next(iter(self._pending.values())))
            pending = _Pending(sock, client)
            self._pending[sock] = pending
            selector.register(sock, selectors.EVENT_READ, pending)

    def _read(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        try:
            data = pending.sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(selector, pending)
            return
        pending.head += data
        if b"\r\n\r\n" in pending.head or b"\n\n" in pending.head:
            selector.unregister(pending.sock)
            del self._pending[pending.sock]
            self._dispatch(pending)
        elif len(pending.head) > MAX_HEAD_BYTES:
            try:
                pending.sock.send(_HEAD_TOO_LARGE)
            except OSError:
                pass
            self._drop(selector, pending)

    def _drop(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        self._pending.pop(pending.sock, None)
        try:
            selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass
        pending.sock.close()

    # -- the handler threads ---------------------------------------------------------------------

    def _dispatch(self, pending: _Pending) -> None:
        pending.sock.setblocking(True)
        pending.sock.settimeout(WRITE_TIMEOUT_S)
        try:
            self._requests.put_nowait((pending.sock, pending.client, bytes(pending.head)))
        except queue.Full:  # every handler is busy and many requests wait: this one is refused
            pending.sock.close()
            return
        with self._lock:
            if self._idle == 0 and len(self._handlers) < MAX_CONCURRENT_REQUESTS:
                thread = threading.Thread(target=self._handle_requests, name="fastapi-doctor-handler", daemon=True)
                self._handlers.append(thread)
                thread.start()

    def _handle_requests(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._requests.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            sock, client, head = item
            try:
                _Handler(sock, (client, 0), self, head)
            except (ConnectionError, TimeoutError):
                pass  # the client went away or stopped reading: not an error of the agent
            except Exception as exc:
                containment.report("side server", exc)
            finally:
                sock.close()

    # -- stop ------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait(5)
        for _ in self._handlers:
            try:
                self._requests.put_nowait(None)
            except queue.Full:
                break

    def server_close(self) -> None:
        for sock in (self.socket, self._wake_r, self._wake_w):
            try:
                sock.close()
            except OSError:
                pass

    def close_inherited(self) -> None:
        """In a forked child: close the parent's sockets (its threads did not survive the fork)."""
        for sock in [*self._pending, self.socket, self._wake_r, self._wake_w]:
            try:
                sock.close()
            except OSError:
                pass
        self._pending.clear()


class SideApp:
    """What the side server publishes. Built by the agent; reads only."""

    def __init__(
        self,
        *,
        doctor: Callable[[], dict[str, Any]],
        page: Callable[[dict[str, Any], str], str],  # (the doctor document, the host the client used)
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


class _SendAll(io.BufferedIOBase):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    """One request whose head the reading loop already has; HTTP/1.0, so the connection then closes."""

    server: DoctorHTTPServer  # type: ignore[assignment]
    server_version = "fastapi-doctor"
    sys_version = ""

    def __init__(self, sock: socket.socket, client: Any, server: DoctorHTTPServer, head: bytes) -> None:
        self._head = head
        super().__init__(sock, client, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)  # a body is never read
        # sendall, not a raw socket file: its write() sends what the socket takes at once and drops the
        # rest (a /metrics page of several MB was cut at 3.75 MB, a truncated scrape).
        self.wfile = _SendAll(self.connection)

    def finish(self) -> None:
        try:
            self.wfile.close()
        finally:
            self.rfile.close()

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
                self._send(200, "text/html; charset=utf-8", app.page(app.doctor(), self._hostname()).encode())
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

    def _hostname(self) -> str:
        """The host the client reached this server by (its Host header without the port), for links to
        the same machine's other ports; the loopback address when the header is missing or odd."""
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name if name and all(c.isalnum() or c in ".-[]:" for c in name) else "127.0.0.1"

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
    return runbooks.packaged(root_cause).read_bytes()


class SideServer:
    """Handle on the running server: ``stop()`` takes it back."""

    def __init__(self, server: DoctorHTTPServer, thread: threading.Thread, first_port: int | None = None) -> None:
        self.server = server
        self.thread = thread
        # A prefork worker's configured port: its siblings took it and the next ones (None otherwise).
        self.first_port = first_port

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def siblings(self, timeout_s: float = 0.05) -> list[int]:
        """Ports of the side servers of the other workers: those answering ``/healthz`` as fastapi-doctor
        on the ports a worker takes. Read when the page is asked for, never on the app's path."""
        if self.first_port is None:
            return []
        host = self.server.server_address[0]
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        found = []
        for port in range(self.first_port, min(self.first_port + MAX_WORKER_PORTS, 65535) + 1):
            if port == self.port:
                continue
            try:
                with socket.create_connection((host, port), timeout=timeout_s) as sock:
                    sock.settimeout(timeout_s * 10)
                    sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    head = sock.recv(1024)
            except OSError:
                continue
            if b"\r\nServer: fastapi-doctor" in head:
                found.append(port)
        return found

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _bind(app: SideApp, host: str, port: int, worker: bool) -> DoctorHTTPServer:
    """Bind ``port``; a worker (``worker=True``) whose port is taken tries the next ones."""
    last = port + (MAX_WORKER_PORTS if worker and port else 0)
    while True:
        try:
            return DoctorHTTPServer((host, port), app)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port >= min(last, 65535):
                raise
            port += 1


def _bind_error(host: str, port: int, exc: OSError) -> str:
    """What went wrong and which setting to change: the port when it is taken, the host otherwise."""
    where = f"OTEL_EXPORTER_PROMETHEUS_HOST={host!r}, OTEL_EXPORTER_PROMETHEUS_PORT={port}"
    if exc.errno == errno.EADDRINUSE:
        fix = "address already in use; set OTEL_EXPORTER_PROMETHEUS_PORT to a free port"
    elif isinstance(exc, socket.gaierror):
        fix = f"the host {host!r} does not resolve ({exc.strerror}); set OTEL_EXPORTER_PROMETHEUS_HOST to an address of this machine (localhost, 0.0.0.0)"
    elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        fix = f"the host {host!r} is not an address of this machine; set OTEL_EXPORTER_PROMETHEUS_HOST to one (localhost, 0.0.0.0)"
    elif exc.errno == errno.EACCES:
        fix = f"port {port} needs privileges; set OTEL_EXPORTER_PROMETHEUS_PORT above 1023"
    else:
        fix = str(exc)
    return f"fastapi-doctor: side server cannot listen on {host}:{port} ({where}): {fix}. The app keeps serving without /metrics and /doctor."


def _loopback_only(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
        return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    except (OSError, ValueError):
        return False


def start(app: SideApp, host: str, port: int, worker: bool = False) -> SideServer | None:
    """Start the side server; on a bind error log one clear line and return None (the app serves on).

    ``worker``: this process is one of several workers of a prefork server, or a child process of an
    instrumented one (see docs/reliability.md); when ``port`` is taken (by a sibling or the parent) it
    takes the next free port up to ``MAX_WORKER_PORTS`` above.
    """
    try:
        server = _bind(app, host, port, worker)
    except OSError as exc:
        _log.error("%s", _bind_error(host, port, exc))
        return None
    thread = threading.Thread(target=server.serve_forever, name="fastapi-doctor-server", daemon=True)
    thread.start()
    _log.info("fastapi-doctor: findings at http://%s:%s/ (metrics at /metrics)", host, server.server_address[1])
    if app.token is None and not _loopback_only(host):
        _log.warning(
            "fastapi-doctor: the side server listens on %s:%s without FASTAPI_DOCTOR_AUTH_TOKEN: /doctor and the "
            "page (routes, SQL fingerprints, code locations) are open to anyone who reaches this port; set "
            "FASTAPI_DOCTOR_AUTH_TOKEN, or OTEL_EXPORTER_PROMETHEUS_HOST=localhost",
            host, server.server_address[1],
        )
    return SideServer(server, thread, port if worker and port else None)


def close_inherited(side: SideServer) -> None:
    """In a forked child: release the parent's sockets (its serving threads did not survive the fork,
    so ``stop()`` would wait for them)."""
    side.server.close_inherited()
