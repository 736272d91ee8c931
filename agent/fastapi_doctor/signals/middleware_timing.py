"""Self-time of each middleware layer (``slow_middleware``).

A stack wrapper interposes a timer before each of the app's own middleware layers (those of
``app.user_middleware``: pure ASGI classes, ``BaseHTTPMiddleware`` and ``@app.middleware("http")``,
Starlette's GZip, CORS, TrustedHost…) and one after the last of them.

Timers are plain functions, not coroutines: a coroutine frame in the middleware chain is paid on every
resume of the request's task (five per request through one ``BaseHTTPMiddleware``), which cost
35-66 us per request measured on the benchmark app. A timer only takes timestamps: when its layer is
called, and when its layer emits ``http.response.start`` and the final body message (through a send
that is a plain function too). A layer's self-time is then

* its work before calling the inner app: inner timer called - its timer called;
* its work on the response start: its start message - the inner layer's start message;
* its work on the final body message: its final message - the inner layer's final message
  (a signing or compressing ``send`` counts to its layer, not to the endpoint);

and a layer that answers without calling the inner app (a CORS preflight, a 401) owns the time to its
final message. Not counted: work on body chunks before the last one of a streamed response, and work
after the final message is sent (the client already has its response).

Timers keep ``.app``, so the stack stays walkable. Layers whose inner app is not at ``.app`` end
the timed chain; the last timed layer is not reported (its inner time is unknown), nor is a layer
that turns out to call its inner app by another reference (its inner timer never runs). An app without
middleware of its own gets no timer at all. ``uninstrument`` puts every layer back.

``fastapi_doctor.middleware.duration`` has one attribute, ``fastapi.middleware`` (the class name,
or the dispatch function's for ``@app.middleware("http")``). Every ``EVERY`` requests (after
``MIN_CALLS``) a layer whose self-time is above ``FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS``, or above
half of the request time (and ``SHARE_FLOOR_S``) in a request that ran alone (no other in flight at
any moment of it), in at least
half of the recent requests, is a ``slow_middleware`` finding at its dispatch/``__call__``.

Task hops: a ``BaseHTTPMiddleware`` runs the inner app in another task and hops between the two tasks
three times per request (to start the inner app, for the response start, for the final body), and
each hop waits for every other ready task of the loop. Under load that wait is most of a fast request,
and it is queueing, not the layer's work: in a request that was not alone in flight, each hop is
charged the loop's current queue wait (the heartbeat's recent lateness, ``eventloop.queue_wait``)
less, and the share rule does not apply. A sample that would count as slow is also charged the
garbage collector's pauses inside its segments less (``gc_pauses.overlap``): under load one full
collection can sit in the task switches of a whole window of requests.

Timed requests: at most ``FASTAPI_DOCTOR_MIDDLEWARE_TIMED_PER_SECOND`` requests a second and process
(a token bucket; 0 times every request). A layer's self-time is a property of the layer, and a
window of 64 timed requests is as good a p50 at 50 a second as at 5,000; timing each layer of every
request cost about 12 us per request on the benchmark app (docs/performance.md). Below the rate every
request is timed. A request left untimed passes the timers at the cost of one call each.
"""

from __future__ import annotations

import sys
import types
from array import array
from collections.abc import Iterator
from time import perf_counter
from typing import Any

from fastapi_doctor import attribution, containment
from fastapi_doctor.context import RequestState, current_request
from fastapi_doctor.findings import Location
from fastapi_doctor.sampling import TokenBucket
from fastapi_doctor.signals import eventloop, gc_pauses
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

    __slots__ = ("name", "attrs", "location", "window", "hops")

    def __init__(self, name: str, location: Location | None, hops: int = 0) -> None:
        self.name = name
        self.hops = hops  # task switches per request inside the layer (see the module doc)
        self.attrs = {"fastapi.middleware": name}
        self.location = location
        self.window = Window()


class _Chain:
    """The timers of one built stack. ``reported`` layers get a self-time (the last timer has none)."""

    __slots__ = ("layers", "timers", "size", "active", "undo", "bucket")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket  # decides which requests are timed (the signal's, shared by its chains)
        self.layers: list[_Layer] = []
        self.timers: list[_LayerTimer] = []
        self.size = 0
        self.active = True
        self.undo: list[tuple[Any, Any]] = []  # (parent, timer) to splice out


def _new_sample(size: int) -> array[float]:
    """Per request, per timer: when it was called, when its layer emitted the response start, when
    its layer emitted the final body message (0.0: did not happen). An ``array``, not a list: it is
    not tracked by the garbage collector (see ``_TimedSend``)."""
    return array("d", bytes(24 * size))


class _TimedSend:
    """The ``send`` a timer gives its layer: notes when the layer emits the response start and the
    final body message, and returns the outer send's awaitable (no frame of its own).

    One small object per layer and request rather than a closure (a function and its cells): objects
    the garbage collector tracks, allocated while requests overlap, decide how often it runs (see
    docs/performance.md), so the request path allocates as few as it can.
    """

    __slots__ = ("send", "t", "at")

    def __init__(self, send: Any, t: array[float], at: int) -> None:
        self.send = send
        self.t = t
        self.at = at

    def __call__(self, message: Any) -> Any:
        kind = message["type"]
        if kind == "http.response.start":
            self.t[self.at + 1] = perf_counter()
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.t[self.at + 2] = perf_counter()
        return self.send(message)


class _LayerTimer:
    """ASGI app placed in front of a layer (``.app`` is the layer). A plain function: no frame of
    its own in the chain."""

    __slots__ = ("app", "chain", "index")

    def __init__(self, app: Any, chain: _Chain, index: int) -> None:
        self.app = app
        self.chain = chain
        self.index = index

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        now = perf_counter()
        chain = self.chain
        if scope["type"] != "http" or not chain.active:
            return self.app(scope, receive, send)
        state = current_request.get()
        if state is None:
            return self.app(scope, receive, send)
        data = state.data
        if self.index == 0:
            if not chain.bucket.take():
                return self.app(scope, receive, send)  # not timed: the inner timers find no sample
            t = _new_sample(chain.size)
            if data is None:
                state.data = data = {}
            data[_KEY] = chain
            data[chain] = t
        else:
            t = data.get(chain) if data is not None else None
            if t is None:
                return self.app(scope, receive, send)
        at = 3 * self.index
        t[at] = now
        return self.app(scope, receive, _TimedSend(send, t, at))


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


_HOPS = 3


def _gc_overlap(called: float, inner_called: float, started: float, inner_started: float, ended: float,
                inner_ended: float) -> float:
    """Seconds of garbage-collector pauses inside a layer's timed segments (``perf_counter`` and the
    pauses' ``monotonic`` are both CLOCK_MONOTONIC on Linux)."""
    if inner_called == 0.0:
        return gc_pauses.overlap(called, ended or started or called)
    paused = gc_pauses.overlap(called, inner_called)
    if started and inner_started:
        paused += gc_pauses.overlap(inner_started, started)
    if ended and inner_ended:
        paused += gc_pauses.overlap(inner_ended, ended)
    return paused


def _hops_tasks(layer: Any) -> bool:
    base = sys.modules.get("starlette.middleware.base")
    cls = getattr(base, "BaseHTTPMiddleware", None)
    return isinstance(cls, type) and isinstance(layer, cls)


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
        self._bucket = TokenBucket(0.0)
        self._active = False

    def instrument(self, agent: Any) -> None:
        self._agent = agent
        self._slow_s = agent.settings.slow_middleware_ms / 1000.0
        self._bucket = TokenBucket(agent.settings.middleware_timed_per_second)
        self._histogram = histogram(
            agent,
            "fastapi_doctor.middleware.duration",
            "s",
            "Self-time of a middleware layer: time inside it minus time inside the app it calls "
            "(on at most FASTAPI_DOCTOR_MIDDLEWARE_TIMED_PER_SECOND requests a second).",
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
        chain = _Chain(self._bucket)
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
            chain.layers.append(_Layer(name, location_of(code), _HOPS if _hops_tasks(layer) else 0))
        self._chains.append(chain)
        return new_top

    # -- after each request --------------------------------------------------------------------

    def _finished(self, state: RequestState) -> None:
        data = state.data
        if not data:
            return
        chain = data.get(_KEY)
        if chain is None:
            return
        t = data[chain]
        layers = chain.layers
        duration = state.duration
        record = self._histogram.record
        slow_s = self._slow_s
        # Share of the request only counts when the request was alone in flight (see the module doc).
        alone = state.alone
        wait = 0.0 if alone else eventloop.queue_wait()
        # A routed request went through every layer: a timer that never ran means the layer before it
        # calls its inner app by another attribute than .app; that layer's self-time is unknown.
        routed = state.route is not None
        at = 0
        for layer in layers:
            called, started, ended = t[at], t[at + 1], t[at + 2]
            inner_called, inner_started, inner_ended = t[at + 3], t[at + 4], t[at + 5]
            at += 3
            if called == 0.0:
                break  # an earlier layer answered: no later layer ran
            if inner_called == 0.0:
                if routed:
                    continue
                own = (ended or started or called) - called  # answered without the inner app
            else:
                own = inner_called - called
                if started and inner_started:
                    own += started - inner_started
                if ended and inner_ended:
                    own += ended - inner_ended
            if layer.hops and wait:
                own -= layer.hops * wait
            share = own / duration if duration > 0 else 0.0
            slow = own > slow_s or (alone and share > 0.5 and own >= SHARE_FLOOR_S)
            if slow:
                # Only where it would count (the common path pays nothing): a collector's pause
                # inside the layer's segments is no work of the layer's. Under load one full
                # collection (~30 ms) can sit in the task switches of a whole window of requests.
                paused = _gc_overlap(called, inner_called, started, inner_started, ended, inner_ended)
                if paused:
                    own -= paused
                    share = own / duration if duration > 0 else 0.0
                    slow = own > slow_s or (alone and share > 0.5 and own >= SHARE_FLOOR_S)
            if own < 0.0:
                own = 0.0
            record(own, layer.attrs)
            if layer.window.add((own, share), slow):
                self._report(layer)

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
