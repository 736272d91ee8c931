"""Quotes from the pricing service: a blocking client (the bug) and an async one (the fix).

The pricing service is a stand-in started by the patient on a thread of its own (a real HTTP server
on 127.0.0.1 that takes ``PRICING_DELAY_S`` to answer), or the one at ``PATIENT_PRICING_URL``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

PRICING_DELAY_S = 0.2


def fetch_quote_blocking(base_url: str, symbol: str) -> dict[str, Any]:
    """A synchronous HTTP call: inside ``async def`` it stops the event loop until the answer comes."""
    with urllib.request.urlopen(f"{base_url}/quotes/{symbol}", timeout=10) as response:
        return json.load(response)


async def fetch_quote(client: httpx.AsyncClient, symbol: str) -> dict[str, Any]:
    """The same call with the app's async client: the loop serves other requests meanwhile."""
    response = await client.get(f"/quotes/{symbol}")
    response.raise_for_status()
    return response.json()


class _PricingHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(PRICING_DELAY_S)
        symbol = self.path.rsplit("/", 1)[-1][:12]
        body = json.dumps({"symbol": symbol, "price": 100 + sum(map(ord, symbol)) % 50}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class PricingService:
    """The stand-in pricing service: ``start()`` returns its URL, ``stop()`` ends it."""

    def __init__(self) -> None:
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        configured = os.environ.get("PATIENT_PRICING_URL")
        if configured:
            return configured.rstrip("/")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _PricingHandler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="pricing-service", daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
