"""What users would pick instead, on the benchmark's app: each in a venv of its own under
.cache/bench-peers/<name>/ with the same FastAPI, Starlette, pydantic, uvicorn, uvloop and httptools
as the project's venv, served by ``peer_app.py`` (``BENCH_PEER=<name>``).

* ``instrumentator``: prometheus-fastapi-instrumentator (request metrics only, /metrics exposed);
* ``logfire``: Logfire's ``instrument_fastapi``, nothing sent (``send_to_logfire=False``, no console);
* ``sentry``: Sentry's SDK with its default FastAPI/Starlette integrations, traces at 10 %, events
  and transactions sent to a local sink (an HTTP server in the benchmark's process that answers 200).

    .venv/bin/python bench/peers.py     # creates the venvs (a minute each, pip's cache helps)
"""

from __future__ import annotations

import http.server
import importlib.metadata
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".cache" / "bench-peers"
# The server stack every configuration runs on: the project venv's versions, pinned in each peer's venv.
SHARED = ("fastapi", "starlette", "pydantic", "uvicorn", "uvloop", "httptools")
PEERS: dict[str, tuple[str, ...]] = {
    "instrumentator": ("prometheus-fastapi-instrumentator>=7,<9",),
    "logfire": ("logfire[fastapi]>=3,<7",),
    "sentry": ("sentry-sdk>=2,<4",),
}


def python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def ensure(peer: str) -> Path:
    """The peer's venv (created on first use); its python."""
    venv = VENVS / peer
    marker = venv / ".installed"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in SHARED]
    wanted = "\n".join([*pins, *PEERS[peer]])
    if marker.exists() and marker.read_text() == wanted:
        return python(peer)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python(peer)), "-m", "pip", "install", "-q", *pins, *PEERS[peer]], check=True)
    marker.write_text(wanted)
    return python(peer)


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Sink:
    """A local endpoint that takes Sentry's envelopes and throws them away."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> int:
    for peer in PEERS:
        print(peer, ensure(peer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
