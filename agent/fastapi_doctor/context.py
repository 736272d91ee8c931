"""Per-request state shared by the signals: set once per request by the agent's middleware."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

current_request: ContextVar[RequestState | None] = ContextVar("fastapi_doctor_request", default=None)

# Requests in flight, by id(state). Read by watchdog threads to find the request the loop is running;
# dict set/pop are atomic under the GIL, so the hot path takes no lock.
active_requests: dict[int, RequestState] = {}

# Threads waiting for a database pool connection now: thread ident -> callers waiting in it. Written
# by the database signal around each checkout (each thread writes its own key only), read by the
# threadpool's watchdog to tell threads waiting for the pool from threads blocked elsewhere.
pool_waiters: dict[int, int] = {}


class _Admissions:
    """Requests admitted so far (all apps of the process); a request that sees the same count when it
    finishes, and none in flight when it started, ran alone."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


admissions = _Admissions()


class RequestState:
    """What the agent knows of one HTTP request. Never holds bodies, headers or query strings."""

    __slots__ = (
        "method",
        "start",
        "route",
        "mount_prefix",
        "status",
        "sampled",
        "outer_task",
        "inner_task",
        "root_causes",
        "body_bytes",
        "content_encoding",
        "content_type",
        "accepts_gzip",
        "scope",
        "data",
        "finished",
        "duration",
        "span",
        "alone",
        "admission",
        "serialize_s",
    )

    def __init__(self, method: str, start: float, scope: Any) -> None:
        self.method = method
        self.start = start
        self.route: str | None = None
        self.mount_prefix = ""
        self.status: int | None = None
        self.sampled = False
        self.outer_task: Any = None
        self.inner_task: Any = None
        self.root_causes: list[str] | None = None
        self.body_bytes = 0
        self.content_encoding = "identity"
        # The response's media type (raw header value; read only to judge compressibility, never exported).
        self.content_type: bytes | None = None
        self.accepts_gzip = False
        self.scope = scope
        # Free-form per-signal data (created on first use, so requests that need none pay nothing).
        self.data: dict[str, Any] | None = None
        self.finished = False
        self.duration = 0.0
        # The request's server span when it is recorded (sampled), for span events from other threads.
        self.span: Any = None
        # No other request was in flight at any moment of this one (set when it finishes): its
        # timings hold no waiting for the loop behind other requests.
        self.alone = False
        self.admission = 0  # admissions.value when this request was admitted
        # Seconds spent serialising the response (FastAPI's serialize_response, the response's render).
        self.serialize_s = 0.0

    def add_root_cause(self, root_cause: str) -> None:
        if self.root_causes is None:
            self.root_causes = [root_cause]
        elif root_cause not in self.root_causes:
            self.root_causes.append(root_cause)

    def signal_data(self) -> dict[str, Any]:
        if self.data is None:
            self.data = {}
        return self.data
