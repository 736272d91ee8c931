"""The agent's own lean ASGI middleware: one per app, outermost in the built stack.

It measures every request (the FastAPI span path runs only for sampled requests), keeps the
:class:`RequestState` that the signals share, and records ``http.server.request.duration`` with the
stable semantic-convention attributes. The hot path builds no attribute dict: sets are cached per
(method, route, status).
"""

from __future__ import annotations

from asyncio import current_task as _current_task
from collections.abc import Callable
from time import perf_counter
from typing import Any

from opentelemetry.trace import get_current_span as _get_current_span

from fastapi_doctor import containment, lifecycle, sampling
from fastapi_doctor.context import RequestState, active_requests, admissions, current_request
from fastapi_doctor.lean_metrics import LeanMetrics

_admitted = sampling.admitted

_KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"})

RequestHook = Callable[[RequestState], None]


class RequestMetrics:
    """Instruments of the request path, created once; attribute sets cached per route."""

    def __init__(self, lean: LeanMetrics) -> None:
        self.duration = lean.histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            boundaries=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
        )
        # (method, route, status, scheme) -> the attribute set recorded with.
        self.attribute_sets: dict[tuple[str, str | None, int | None, str], dict[str, Any]] = {}
        # Hooks of the signals, run after each request (contained one by one), in their declared order
        # (added by the agent's instrumentation context: Instrumentation.on_request_finished).
        self.finished_hooks: list[RequestHook] = []

    def attributes(self, method: str, route: str | None, status: int | None, scheme: str) -> dict[str, Any]:
        key = (method, route, status, scheme)
        attrs = self.attribute_sets.get(key)
        if attrs is None:
            attrs = {"http.request.method": method, "url.scheme": scheme}
            if route is not None:
                attrs["http.route"] = route
            if status is not None:
                attrs["http.response.status_code"] = status
            if status is None or status >= 500:
                attrs["error.type"] = str(status) if status is not None else "incomplete_response"
            if len(self.attribute_sets) < 10000:  # routes are templates; this only guards odd status codes
                self.attribute_sets[key] = attrs
        return attrs


_ACTIVE_SEEN: set[tuple[str, str]] = set()  # (method, scheme) reported once: 0 when none is in flight


def _observe_active_requests(_options: Any) -> list[Any]:
    from opentelemetry.metrics import Observation

    counts = dict.fromkeys(_ACTIVE_SEEN, 0)
    for state in list(active_requests.values()):  # one C call under the GIL: a snapshot
        key = (state.method, state.scope.get("scheme", "http"))
        counts[key] = counts.get(key, 0) + 1
    if len(_ACTIVE_SEEN) < 64:
        _ACTIVE_SEEN.update(counts)
    return [Observation(n, {"http.request.method": m, "url.scheme": s}) for (m, s), n in counts.items()]


def observe_active_requests(meter: Any) -> None:
    """``http.server.active_requests`` as the semantic conventions define it (an UpDownCounter by method
    and scheme), read from the requests in flight on the collection cycle: nothing on the request path.
    The agent turns FastAPI's own HTTP metrics off, so nothing else reports it."""
    meter.create_observable_up_down_counter(
        "http.server.active_requests", callbacks=[_observe_active_requests], unit="{request}",
        description="Number of active HTTP server requests.",
    )


class DoctorMiddleware:
    """Wraps an app's built middleware stack. Keeps ``.app`` so stack walkers still see inside."""

    def __init__(self, app: Any, metrics: RequestMetrics, admits: bool = False) -> None:
        self.app = app
        self._metrics = metrics
        # True where no earlier hook took the sampling decision for this request (FastAPI without
        # native telemetry): the middleware takes it.
        self._admits = admits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # A mounted FastAPI app has its own stack: the request is already measured by the outer app's
        # (counted once, its route the full template). The same request is the same scope dict (Starlette's
        # Mount updates it in place); a request uvicorn starts from inside the previous one's task (the
        # next one pipelined on its connection) inherits that request's state but has a scope of its own.
        outer = current_request.get()
        if scope["type"] != "http" or (outer is not None and outer.scope is scope):
            if scope["type"] == "lifespan":
                send = lifecycle.flushing_send(send)  # telemetry flushed when the app shuts down
            await self.app(scope, receive, send)
            return
        try:
            # Inline rather than a method: this runs for every request (docs/performance.md, decision 11).
            method = scope.get("method", "")
            state = RequestState(method if method in _KNOWN_METHODS else "_OTHER", perf_counter(), scope)
            state.outer_task = _current_task()
            admissions.value += 1
            # Alone so far (none in flight); still alone at the end if nobody was admitted meanwhile.
            state.admission = admissions.value if not active_requests else -1
            root = scope.get("app_root_path", scope.get("root_path"))
            if root:
                state.mount_prefix = root.rstrip("/")
            admitted = _admitted.get()
            state.sampled = sampling.admit(scope) if self._admits or admitted is None else admitted
            if state.sampled:
                state.span = _get_current_span()
        except Exception as exc:
            containment.report("request middleware", exc)
            await self.app(scope, receive, send)
            return
        token = current_request.set(state)
        active_requests[id(state)] = state

        try:
            await self.app(scope, receive, _MeasuredSend(state, send))
        except Exception:
            # Inside contrib's ServerErrorMiddleware (FastAPI before 0.165): it answers 500 after us.
            if state.status is None:
                state.status = 500
            raise
        finally:
            state.duration = perf_counter() - state.start
            state.alone = state.admission == admissions.value
            state.finished = True
            active_requests.pop(id(state), None)
            current_request.reset(token)
            self._finish(state)

    def _finish(self, state: RequestState) -> None:
        metrics = self._metrics
        try:
            if state.route is None:
                state.route = route_of(state.scope)
            key = (state.method, state.route, state.status, state.scope.get("scheme", "http"))
            attrs = metrics.attribute_sets.get(key)
            if attrs is None:
                attrs = metrics.attributes(*key)
            metrics.duration.record(state.duration, attrs)
        except Exception as exc:
            containment.report("request metrics", exc)
        for hook in metrics.finished_hooks:
            try:
                hook(state)
            except Exception as exc:
                containment.report(getattr(hook, "__qualname__", "request hook"), exc)
        # Break the task -> coroutine -> state -> task cycle: the request's task and everything it
        # holds are then freed by reference counting, not left for the cyclic garbage collector.
        state.scope = state.outer_task = state.inner_task = state.span = None


class _MeasuredSend:
    """The ``send`` the app is given: notes status, body bytes and the response's encoding and type,
    and returns the server's awaitable (no frame of its own). An object rather than a closure: fewer
    objects for the garbage collector per request (see docs/performance.md)."""

    __slots__ = ("state", "send")

    def __init__(self, state: RequestState, send: Any) -> None:
        self.state = state
        self.send = send

    def __call__(self, message: dict[str, Any]) -> Any:
        kind = message["type"]
        if kind == "http.response.body":
            self.state.body_bytes += len(message.get("body", b""))
        elif kind == "http.response.start":
            state = self.state
            state.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"content-encoding":
                    state.content_encoding = value.decode("latin-1")
                elif name == b"content-type":
                    state.content_type = value
        return self.send(message)


def route_of(scope: dict[str, Any]) -> str | None:
    """Route template from the routed scope, for FastAPI versions without the route hook."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path is None:
        return None
    return scope.get("root_path", "").rstrip("/") + path
