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
* its work on the final body message: its final message - the inner layer's final message, or its
  own start message when that came later (a signing or compressing ``send`` counts to its layer, not
  to the endpoint; no moment is counted twice);

and a layer that answers without calling the inner app (a CORS preflight, a 401) owns the time to its
final message. Not counted: work on body chunks before the last one of a streamed response, and work
after the final message is sent (the client already has its response).

Timers keep ``.app``, so the stack stays walkable. Layers whose inner app is not at ``.app`` end
the timed chain; the last timed layer is not reported (its inner time is unknown), nor is a layer
that turns out to call its inner app by another reference (its inner timer never runs). An app without
middleware of its own gets no timer at all. ``uninstrument`` puts every layer back.

``fastapi_doctor.middleware.duration`` has one attribute, ``fastapi_doctor.middleware`` (the class name,
or the dispatch function's for ``@app.middleware("http")``). Each layer keeps a window of its recent
self-times over all requests and one per method and route. Every ``EVERY`` requests (after
``MIN_CALLS``) a layer whose self-time is above ``FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS``, or above half
of the request time (and ``SHARE_FLOOR_S``) in a request that ran alone (no other in flight at any
moment of it), in at least half of the recent requests, is a ``slow_middleware`` finding at its
dispatch/``__call__``: with no route when every route seen (two at least) is slow ("every route pays
it"), else on each method and route that is (a middleware that works only for ``/orders…``).

Waiting for a CPU: on a busy machine the loop thread waits on the kernel's run queue inside any
segment (5-20 ms at a time, measured under a load average of 10 on 2 cores), enough to make a layer
of a 2 ms request look like most of it. Each timestamp is paired with the thread's run delay
(``run_delay``: Linux schedstat; read only in requests that start alone, the only ones that can run
alone); in a request that ran alone, the delay inside a layer's segments is taken off its self-time
(nothing else ran on the loop: the thread waited with this request's work).
In a request that was not alone the thread's run delay may have passed while the layer awaited its
own I/O and the loop ran other requests, which is still the layer's time: there the task hops are
taken off instead.

Task hops: a ``BaseHTTPMiddleware`` runs the inner app in another task and hops between the two tasks
on every message, and each hop waits for every other ready task of the loop (a pass of its ready
queue) and, on a busy machine, for a CPU. Under load that wait is most of a fast request, and it is
waiting, not the layer's work. With Starlette 1.x and anyio 4, the inner app's response start
reaches the layer's task two passes later (anyio's ``send`` yields once before it hands the message
over, then the layer's task is woken): the timer below such a layer starts a probe at each message
that ``call_soon``s itself once more, so it runs just before the layer's task, and the segment is
counted from then (measured under wrk -c32 on 2 cores: the rest is the layer's own work to within
0.1 ms). The start of the inner task (one pass, no message to probe) is charged the request's pass
as the probes measured it. The final body segment is not the layer's: its dispatch has returned
before its response starts, and the body only streams from one task to the other. In a request that
was not alone those waits are taken off. The share rule only applies to requests that ran alone. A
sample that would count as slow is also charged the garbage collector's pauses inside its segments
less (``gc_pauses.overlap``): under load one full collection can sit in the task switches of a whole
window of requests.

Not corrected: on a machine with many more runnable threads than cores (load average 15 on 2 cores),
the process can be descheduled for 100 ms and more at a time; when that lands in the start of the
inner task of most requests of a window, a cheap ``BaseHTTPMiddleware`` still reads as slow there.

Timed requests: at most ``FASTAPI_DOCTOR_MIDDLEWARE_TIMED_PER_SECOND`` requests a second and process
(a token bucket; 0 times every request). A layer's self-time is a property of the layer, and a
window of 64 timed requests is as good a p50 at 50 a second as at 5,000; timing each layer of every
request cost about 12 us per request on the benchmark app (docs/performance.md), before each of its
timestamps also read the run delay (one ``pread``, a few us) when the request started alone. Below the rate every request is timed.
A request left untimed passes the timers at the cost of one call each.
"""

from __future__ import annotations

import functools
import sys
import types
from array import array
from asyncio import _get_running_loop
from time import perf_counter
from typing import Any

from fastapi_doctor import attribution, containment
from fastapi_doctor.context import RequestState, active_requests, current_request
from fastapi_doctor.observations import LayerWindow
from fastapi_doctor.findings import Location
from fastapi_doctor.run_delay import run_delay
from fastapi_doctor.sampling import TokenBucket
from fastapi_doctor.kernel.asgi import splice_out, walk
from fastapi_doctor.kernel import gc_pauses
from fastapi_doctor.kernel.frames import location_of
from fastapi_doctor.kernel.metrics import DURATION_BUCKETS, histogram
from fastapi_doctor.kernel.windows import SHARE_FLOOR_S, Window

_KEY = "middleware"
_MAX_ROUTES = 1000  # per layer; requests of further routes count only to the layer's own window


class _Layer:
    """One middleware layer: its name, attributes (built once), location, its window over every
    request, and one window per method and route (a layer may be slow only for some paths)."""

    __slots__ = ("name", "attrs", "location", "window", "hops", "routes", "route_count")

    def __init__(self, name: str, location: Location | None, hops: bool = False) -> None:
        self.name = name
        self.hops = hops  # it runs its inner app in another task (see the module doc)
        self.attrs = {"fastapi_doctor.middleware": name}
        self.location = location
        self.window = Window()
        # method -> route -> window (two lookups per request, no key built)
        self.routes: dict[str, dict[str | None, Window]] = {}
        self.route_count = 0

    def route_window(self, method: str, route: str | None) -> Window | None:
        by_route = self.routes.get(method)
        window = by_route.get(route) if by_route is not None else None
        if window is None and self.route_count < _MAX_ROUTES:
            window = self.routes.setdefault(method, {})[route] = Window()
            self.route_count += 1
        return window

    def slow_routes(self) -> int:
        """Routes (method and route) slow in at least half of their recent requests."""
        windows = (window for by_route in self.routes.values() for window in by_route.values())
        return sum(2 * window.flagged >= len(window.items) for window in windows)

    def slow_everywhere(self) -> bool:
        """Every route seen (at least two) is slow: the layer's cost does not depend on the path."""
        return self.route_count >= 2 and self.slow_routes() == self.route_count


class _Chain:
    """The timers of one built stack. ``reported`` layers get a self-time (the last timer has none)."""

    __slots__ = ("layers", "timers", "size", "active", "bucket")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket  # decides which requests are timed (the signal's, shared by its chains)
        self.layers: list[_Layer] = []
        self.timers: list[_LayerTimer] = []
        self.size = 0
        self.active = True

    def stop(self) -> None:
        self.active = False  # a timer still referenced (the top of a stack) only passes through


# Per timer in a sample: when it was called, when its layer emitted the response start and the final
# body message, when the probes started at those two messages ran their second pass (0.0: did not
# happen); then the loop thread's run delay (time waiting for a CPU) at the first three moments. The
# sample's last item is 1.0 when run delays are read: only in a request that started alone (it
# cannot run alone otherwise), as the read is a system call that lets other threads take the GIL.
_SLOTS = 8
_RQ = 5  # offset of the run delays


def _new_sample(size: int) -> array[float]:
    """An ``array``, not a list: it is not tracked by the garbage collector (see ``_TimedSend``)."""
    t = array("d", bytes(8 * (_SLOTS * size + 1)))
    if len(active_requests) <= 1:
        t[-1] = 1.0
    return t


def _mark(t: array[float], at: int) -> None:
    t[at] = perf_counter()
    if t[-1]:
        t[at + _RQ] = run_delay()


def _probe(t: array[float], at: int) -> None:
    t[at] = perf_counter()


def _probe_next_pass(loop: Any, t: array[float], at: int) -> None:
    loop.call_soon(_probe, t, at)


class _TimedSend:
    """The ``send`` a timer gives its layer: notes when the layer emits the response start and the
    final body message, and returns the outer send's awaitable (no frame of its own).

    One small object per layer and request rather than a closure (a function and its cells): objects
    the garbage collector tracks, allocated while requests overlap, decide how often it runs (see
    docs/performance.md), so the request path allocates as few as it can.
    """

    __slots__ = ("send", "t", "at", "loop")

    def __init__(self, send: Any, t: array[float], at: int, loop: Any) -> None:
        self.send = send
        self.t = t
        self.at = at
        self.loop = loop  # set when the layer above hops tasks: probe the loop's queue at each message

    def __call__(self, message: Any) -> Any:
        kind = message["type"]
        if kind == "http.response.start":
            _mark(self.t, self.at + 1)
            if self.loop is not None:
                # Two passes of the loop later, just before the task this message wakes (see the
                # module doc): its wait is that task's.
                self.loop.call_soon(_probe_next_pass, self.loop, self.t, self.at + 3)
        elif kind == "http.response.body" and not message.get("more_body", False):
            _mark(self.t, self.at + 2)
            if self.loop is not None:
                self.loop.call_soon(_probe_next_pass, self.loop, self.t, self.at + 4)
        return self.send(message)


class _LayerTimer:
    """ASGI app placed in front of a layer (``.app`` is the layer). A plain function: no frame of
    its own in the chain."""

    __slots__ = ("app", "chain", "index", "probe")

    def __init__(self, app: Any, chain: _Chain, index: int, probe: bool = False) -> None:
        self.app = app
        self.chain = chain
        self.index = index
        self.probe = probe  # the layer above this timer hops tasks (see the module doc)

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if self.index:
            # Most requests are not timed (decision 8): an inner timer finds no sample and passes
            # on before it reads the clock (docs/performance.md, decision 11).
            state = current_request.get()
            data = state.data if state is not None else None
            if data is None or self.chain not in data:
                return self.app(scope, receive, send)
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
        at = _SLOTS * self.index
        t[at] = now
        if t[-1]:
            t[at + _RQ] = run_delay()
        return self.app(scope, receive, _TimedSend(send, t, at, _get_running_loop() if self.probe else None))


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
        paused += gc_pauses.overlap(max(inner_ended, started), ended)
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
        self._histogram: Any = None
        self._slow_s = 0.025
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
        agent.instrumentation.on_request_finished(self._finished)
        agent.instrumentation.wrap_stack(self._wrap_stack)

    def uninstrument(self) -> None:
        self._active = False  # stacks built from now on get no timers

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
        installs = self._agent.instrumentation
        installs.record(chain.stop, "middleware timers")
        new_top = stack
        for index, (parent, layer) in enumerate(targets):
            hops_above = index > 0 and _hops_tasks(targets[index - 1][1])
            timer = _LayerTimer(layer, chain, index, probe=hops_above)
            chain.timers.append(timer)
            if parent is None:
                new_top = timer
            else:
                parent.app = timer
                installs.record(functools.partial(splice_out, parent, timer), "middleware timers")
        # Every user layer but the last timer's is reported (the last timer only ends the chain).
        for _, layer in targets[: chain.size - 1]:
            name = layer_name(layer)
            code = layer_code(layer)
            if code is not None:
                attribution.register_code(code, "middleware", name)
            chain.layers.append(_Layer(name, location_of(code), _hops_tasks(layer)))
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
        # A routed request went through every layer: a timer that never ran means the layer before it
        # calls its inner app by another attribute than .app; that layer's self-time is unknown.
        route = state.route
        routed = route is not None
        inner = 0
        for layer in layers:
            at, inner = inner, inner + _SLOTS
            called, started, ended = t[at], t[at + 1], t[at + 2]
            inner_called, inner_started, inner_ended = t[inner], t[inner + 1], t[inner + 2]
            if called == 0.0:
                break  # an earlier layer answered: no later layer ran
            if inner_called == 0.0 and routed:
                continue
            own = _segments(t, at, inner, 0)
            if alone and t[-1]:
                # Nothing else ran on the loop: when its thread was runnable and not running, it
                # was this request's work that waited for a CPU.
                own -= _segments(t, at, inner, _RQ)
            elif layer.hops and inner_called:
                own -= _queued(t, at, inner)
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
            sample = (own, share)
            due = layer.window.add(sample, slow)
            window = layer.route_window(state.method, route)
            if window is not None and window.add(sample, slow):
                due = True
            if due:
                self._decide(layer, state.method, route, window)

    def _decide(self, layer: _Layer, method: str, route: str | None, window: Window | None) -> None:
        """A window is due: the layer is slow on every route (one finding, no route), or on this one."""
        try:
            if layer.slow_everywhere() or window is None:
                window, method_seen, route_seen = layer.window, None, None
            else:
                method_seen, route_seen = method, route
            self._agent.report(LayerWindow(
                middleware=layer.name,
                location=layer.location,
                method=method_seen,
                route=route_seen,
                requests=window.count,
                window=len(window.items),
                flagged=window.flagged,
                self_time_p50_s=window.p50(0),
                share_p50=window.p50(1),
                other_routes_fast=layer.slow_routes() < layer.route_count,
            ))
        except Exception as exc:
            containment.report("middleware finding", exc)


def _segments(t: array[float], at: int, inner: int, clock: int) -> float:
    """A layer's segments (see the module doc) summed on one clock: wall (``clock`` 0) or the loop
    thread's run delay (``_RQ``). ``at`` and ``inner`` are the layer's and its inner timer's slots;
    the wall slots say which moments happened."""
    called, started, ended = t[at], t[at + 1], t[at + 2]
    if t[inner] == 0.0:  # answered without the inner app: its time to its last message
        last = 2 if ended else 1 if started else 0
        return t[at + clock + last] - t[at + clock]
    own = t[inner + clock] - t[at + clock]
    if started and t[inner + 1]:
        own += t[at + clock + 1] - t[inner + clock + 1]
    if ended and t[inner + 2]:
        # From the inner final message or the layer's own start, whichever came later: a final body
        # emitted before the layer started its response waited in the layer's start segment.
        since = inner + 2 if t[inner + 2] >= started else at + 1
        own += t[at + clock + 2] - t[since + clock]
    return own


def _queued(t: array[float], at: int, inner: int) -> float:
    """Seconds of a ``BaseHTTPMiddleware``'s segments that are not its work: waits for the loop and
    for a CPU (see "Task hops" in the module doc), and its final body segment. Its dispatch has
    returned before its response starts: what follows is Starlette streaming the body from one task
    to the other. A probe's slot holds when it ran, two passes after its message."""
    started, ended, inner_started, inner_ended = t[at + 1], t[at + 2], t[inner + 1], t[inner + 2]
    woken_for_start, woken_for_end = t[inner + 3], t[inner + 4]
    queued = two_passes = 0.0
    probes = 0
    if started and inner_started and woken_for_start:
        queued += woken_for_start - inner_started
        two_passes += woken_for_start - inner_started
        probes += 1
    if ended and inner_ended:
        queued += ended - max(inner_ended, started)  # the final body segment, all of it
        if woken_for_end:
            two_passes += woken_for_end - inner_ended
            probes += 1
    if probes:
        queued += two_passes / (2 * probes)  # the inner task's start: one pass
    return queued
