"""Self-time of each middleware layer (``slow_middleware``).

A stack wrapper interposes a timer before each of the app's own middleware layers (those of
``app.user_middleware``: pure ASGI classes, ``BaseHTTPMiddleware`` and ``@app.middleware("http")``,
Starlette's GZip, CORS, TrustedHost…) and one after the last of them. Each timer measures the time
inside its layer (T) and the time its layer spent sending body messages through the ``send`` it
was given (S, the outer layers' work and the socket; ``http.response.start`` is not timed, which
spares a frame per layer and message: work a layer does on the start message counts to the layer
inside it). A layer's self-time is ``(T - S)`` of its timer minus ``(T - S)`` of
the next timer: its code before and after the inner app plus its work in the inner app's ``send``
(compression of a streamed body counts to GZip, not to the endpoint).

Timers keep ``.app``, so the stack stays walkable. Layers whose inner app is not at ``.app`` end
the timed chain; the last timed layer is not reported (its inner time is unknown), nor is a layer
that turns out to call its inner app by another reference (its inner timer never runs). An app without
middleware of its own gets no timer at all. ``uninstrument`` puts every layer back.

``fastapi_doctor.middleware.duration`` has one attribute, ``fastapi.middleware`` (the class name,
or the dispatch function's for ``@app.middleware("http")``). Every ``EVERY`` requests (after
``MIN_CALLS``) a layer whose self-time is above ``FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS``, or above
half of the request time (and ``SHARE_FLOOR_S``), in at least half of the recent requests, is a
``slow_middleware`` finding at its dispatch/``__call__``.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from fastapi_doctor import attribution, containment
from fastapi_doctor.context import RequestState, current_request
from fastapi_doctor.findings import Location
from fastapi_doctor.signals.dependencies import (
    DURATION_BUCKETS,
    SHARE_FLOOR_S,
    Window,
    histogram,
    location_of,
    ms,
)

_KEY = "middleware"
_MAX_DEPTH = 64


class _Layer:
    """One middleware layer: its name, attributes (built once), location and window."""

    __slots__ = ("name", "attrs", "location", "window")

    def __init__(self, name: str, location: Location | None) -> None:
        self.name = name
        self.attrs = {"fastapi.middleware": name}
        self.location = location
        self.window = Window()


class _Chain:
    """The timers of one built stack. ``reported`` layers get a self-time (the last timer has none)."""

    __slots__ = ("layers", "timers", "size", "active", "undo")

    def __init__(self) -> None:
        self.layers: list[_Layer] = []
        self.timers: list[_LayerTimer] = []
        self.size = 0
        self.active = True
        self.undo: list[tuple[Any, Any]] = []  # (parent, timer) to splice out


class _Sample:
    """Per request: T and S of each timer, side by side."""

    __slots__ = ("chain", "t")

    def __init__(self, chain: _Chain) -> None:
        self.chain = chain
        self.t = [0.0] * (2 * chain.size)


_current: ContextVar[_Sample | None] = ContextVar("fastapi_doctor_middleware_sample", default=None)


class _LayerTimer:
    """ASGI app placed in front of a layer (``.app`` is the layer)."""

    __slots__ = ("app", "chain", "index")

    def __init__(self, app: Any, chain: _Chain, index: int) -> None:
        self.app = app
        self.chain = chain
        self.index = index

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chain = self.chain
        if scope["type"] != "http" or not chain.active:
            await self.app(scope, receive, send)
            return
        token = None
        if self.index == 0:
            state = current_request.get()
            if state is None:
                await self.app(scope, receive, send)
                return
            sample = _Sample(chain)
            data = state.data
            if data is None:
                state.data = data = {}
            data[_KEY] = sample
            token = _current.set(sample)
        else:
            found = _current.get()
            if found is None or found.chain is not chain:
                await self.app(scope, receive, send)
                return
            sample = found
        t = sample.t
        at = 2 * self.index

        async def timed_body(message: Any) -> None:
            start = perf_counter()
            try:
                await send(message)
            finally:
                t[at + 1] += perf_counter() - start

        def send_timed(message: Any) -> Any:
            # Only body messages are timed (where compression and streaming work happens); the
            # others go straight to the outer send, without a frame of ours.
            if message["type"] == "http.response.body":
                return timed_body(message)
            return send(message)

        start = perf_counter()
        try:
            await self.app(scope, receive, send_timed)
        finally:
            t[at] += perf_counter() - start
            if token is not None:
                _current.reset(token)


def walk(stack: Any) -> Iterator[tuple[Any, Any]]:
    """(parent, layer) along the ``.app`` chain of a built stack; parent is None for the top."""
    parent = None
    seen: set[int] = set()
    depth = 0
    while stack is not None and id(stack) not in seen and depth < _MAX_DEPTH:
        seen.add(id(stack))
        yield parent, stack
        parent, stack = stack, getattr(stack, "app", None)
        depth += 1


def splice_out(parent: Any, wrapper: Any) -> bool:
    """Take ``wrapper`` out of the ``.app`` chain below ``parent`` (other wrappers may sit between)."""
    node = parent
    for _ in range(_MAX_DEPTH):
        inner = getattr(node, "app", None)
        if inner is None:
            return False
        if inner is wrapper:
            node.app = wrapper.app
            return True
        node = inner
    return False


def layer_name(layer: Any) -> str:
    dispatch = getattr(layer, "dispatch_func", None)
    if dispatch is not None:
        if getattr(dispatch, "__self__", None) is layer:  # a subclass's own dispatch method
            return type(layer).__qualname__
        name = getattr(dispatch, "__qualname__", None)
        if isinstance(name, str):
            return name
    return type(layer).__qualname__


def layer_code(layer: Any) -> types.CodeType | None:
    dispatch = getattr(layer, "dispatch_func", None)
    if dispatch is not None:
        func = getattr(dispatch, "__func__", dispatch)
        if isinstance(func, types.FunctionType):
            return func.__code__
    call = getattr(type(layer), "__call__", None)
    if isinstance(call, types.FunctionType):
        return call.__code__
    return None


def _is_user_layer(layer: Any, middleware: Any) -> bool:
    cls = getattr(middleware, "cls", None)
    return isinstance(cls, type) and type(layer) is cls


class MiddlewareSignal:
    name = "middleware"

    def __init__(self) -> None:
        self._agent: Any = None
        self._hooks: Any = None
        self._histogram: Any = None
        self._slow_s = 0.025
        self._chains: list[_Chain] = []
        self._active = False

    def instrument(self, agent: Any) -> None:
        self._agent = agent
        self._slow_s = agent.settings.slow_middleware_ms / 1000.0
        self._histogram = histogram(
            agent,
            "fastapi_doctor.middleware.duration",
            "s",
            "Self-time of a middleware layer: time inside it minus time inside the app it calls.",
            DURATION_BUCKETS,
        )
        self._active = True
        agent.request_metrics.finished_hooks.append(self._finished)
        agent.on_fastapi(self._on_fastapi)

    def uninstrument(self) -> None:
        self._active = False
        agent = self._agent
        if agent is not None and agent.request_metrics is not None:
            agent.request_metrics.remove_hook(self._finished)
        if self._hooks is not None and self._wrap_stack in self._hooks.stack_wrappers:
            self._hooks.stack_wrappers.remove(self._wrap_stack)
        self._hooks = None
        for chain in self._chains:
            chain.active = False  # a timer still referenced (the top of a stack) only passes through
            for parent, timer in reversed(chain.undo):
                splice_out(parent, timer)
            chain.undo.clear()
        self._chains.clear()

    def _on_fastapi(self, hooks: Any) -> None:
        if self._active:
            self._hooks = hooks
            hooks.stack_wrappers.append(self._wrap_stack)

    # -- building the chain --------------------------------------------------------------------

    def _wrap_stack(self, app: Any, stack: Any) -> Any:
        user = list(getattr(app, "user_middleware", None) or ())
        if not user or not self._active:
            return stack
        found: list[tuple[Any, Any]] = []  # (parent, layer) of the user's layers, outermost first
        walkable = True
        for parent, layer in walk(stack):
            if len(found) < len(user) and _is_user_layer(layer, user[len(found)]):
                found.append((parent, layer))
                if len(found) == len(user):
                    break
        if not found:
            return stack
        last = found[-1][1]
        inner = getattr(last, "app", None)
        if inner is None or not callable(inner):
            walkable = False
        chain = _Chain()
        targets = list(found)
        if walkable:
            targets.append((last, inner))
        chain.size = len(targets)
        new_top = stack
        for index, (parent, layer) in enumerate(targets):
            timer = _LayerTimer(layer, chain, index)
            chain.timers.append(timer)
            if parent is None:
                new_top = timer
            else:
                parent.app = timer
                chain.undo.append((parent, timer))
        # Every user layer but the last timer's is reported (the last timer only ends the chain).
        for _, layer in targets[: chain.size - 1]:
            name = layer_name(layer)
            code = layer_code(layer)
            if code is not None:
                attribution.register_code(code, "middleware", name)
            chain.layers.append(_Layer(name, location_of(code)))
        self._chains.append(chain)
        return new_top

    # -- after each request --------------------------------------------------------------------

    def _finished(self, state: RequestState) -> None:
        data = state.data
        if not data:
            return
        sample = data.get(_KEY)
        if sample is None:
            return
        t = sample.t
        layers = sample.chain.layers
        duration = state.duration
        record = self._histogram.record
        slow_s = self._slow_s
        # A routed request went through every layer: a timer that never ran means the layer before it
        # calls its inner app by another attribute than .app; that layer's self-time is unknown.
        routed = state.route is not None
        at = 0
        for layer in layers:
            if routed and t[at + 2] == 0.0:
                at += 2
                continue
            own = (t[at] - t[at + 1]) - (t[at + 2] - t[at + 3])
            if own < 0.0:
                own = 0.0
            record(own, layer.attrs)
            share = own / duration if duration > 0 else 0.0
            if layer.window.add((own, share), own > slow_s or (share > 0.5 and own >= SHARE_FLOOR_S)):
                self._report(layer)
            at += 2

    def _report(self, layer: _Layer) -> None:
        try:
            p50 = layer.window.p50(0)
            share = layer.window.p50(1)
            slow = p50 > self._slow_s
            why = (
                f"above FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS={self._slow_s * 1000:g}"
                if slow
                else f"{share:.0%} of the request"
            )
            self._agent.findings.report(
                "slow_middleware",
                route=None,
                summary=(
                    f"Middleware {layer.name} spends {ms(p50)} ms of its own on every request (p50 of the last "
                    f"{len(layer.window.items)} requests, {why}). Every route pays it: move the work out of "
                    f"the request path, cache it, or limit the middleware to the paths that need it."
                ),
                evidence={
                    "middleware": layer.name,
                    "self_time_p50_ms": ms(p50),
                    "share_of_request": round(share, 3),
                    "requests": layer.window.count,
                    "threshold_ms": round(self._slow_s * 1000.0, 3),
                },
                location=layer.location,
            )
        except Exception as exc:
            containment.report("middleware finding", exc)
