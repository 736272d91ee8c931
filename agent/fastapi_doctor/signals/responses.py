"""Response bodies (``large_payload``): bytes sent per route and encoding, size before compression,
serialisation time.

* Bytes sent and their ``content-encoding`` come from the agent's outermost ``send`` (after any
  compression; streamed and chunked bodies count every message): after each response the request
  hook records ``http.server.response.body.size`` with ``http.route`` and
  ``http.response.header.content-encoding`` (identity, gzip, br, deflate, zstd, compress, or other).
* Where a compression middleware runs (GZip, Brotli, Zstd…), a counter placed just below it counts
  the bytes it was given: ``fastapi_doctor.response.body.uncompressed_size``.
* Serialisation: FastAPI's ``serialize_response`` (validation and encoding against the response
  model) and ``JSONResponse.render`` (``json.dumps``), timed while a request is current:
  ``fastapi_doctor.response.serialize.duration``.

Every ``EVERY`` responses of a route (after ``MIN_CALLS``) it is a ``large_payload`` finding when
at least half of its recent bodies were sent uncompressed, in a compressible media type, to clients
that accept gzip, above ``FASTAPI_DOCTOR_LARGE_RESPONSE_BYTES``; or when serialisation took more than
half of the request (and at least ``SHARE_FLOOR_S``). Windows are kept per method and route (a ``GET``
and a ``POST`` on one path are different endpoints); the location is that endpoint.
"""

from __future__ import annotations

import functools
from time import perf_counter
from typing import Any

from fastapi_doctor import containment
from fastapi_doctor.context import RequestState, current_request
from fastapi_doctor.observations import ResponseWindow
from fastapi_doctor.findings import Location
from fastapi_doctor.kernel.asgi import splice_out, walk
from fastapi_doctor.kernel.frames import code_of, location_of
from fastapi_doctor.kernel.metrics import MEAN_ONLY, ROUTE_DURATION_BUCKETS, histogram
from fastapi_doctor.kernel.windows import SHARE_FLOOR_S, Window

_UNCOMPRESSED = "responses.uncompressed"

# Values of http.response.header.content-encoding; anything else is "other" (bounded cardinality).
ENCODINGS = frozenset({"identity", "gzip", "br", "deflate", "zstd", "compress"})

# Class names of compression middleware (Starlette's and FastAPI's GZip, brotli-asgi, zstd…).
COMPRESSION_MARKERS = ("gzip", "brotli", "zstd", "compress")

_COMPRESSIBLE_TYPES = frozenset(
    {
        b"application/json",
        b"application/javascript",
        b"application/xml",
        b"application/x-ndjson",
        b"application/jsonl",
        b"application/x-www-form-urlencoded",
        b"application/graphql-response+json",
        b"image/svg+xml",
    }
)


def compressible(content_type: bytes | None) -> bool:
    """Media types that gain from compression (text, JSON, XML…); images, archives and unknown do not."""
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return (
        media.startswith(b"text/")
        or media in _COMPRESSIBLE_TYPES
        or media.endswith((b"+json", b"+xml"))
    )


def accepts_gzip(scope: Any) -> bool:
    if not scope:
        return False
    for name, value in scope.get("headers", ()):
        if name == b"accept-encoding":
            return b"gzip" in value.lower()
    return False


def _is_compression(layer: Any) -> bool:
    name = type(layer).__name__.lower()
    return any(marker in name for marker in COMPRESSION_MARKERS)


class _Route:
    """One method and route: attribute sets built once, where its endpoint is, the window of its responses."""

    __slots__ = ("method", "route", "endpoint", "attrs", "by_encoding", "location", "window", "compression", "encoding")

    def __init__(self, method: str, route: str | None, endpoint: Any, location: Location | None) -> None:
        self.method = method
        self.route = route
        self.endpoint = endpoint
        self.attrs: dict[str, Any] = {} if route is None else {"http.route": route}
        self.by_encoding: dict[tuple[str, int, str], dict[str, Any]] = {}
        self.location = location
        # (bytes sent, bytes sent uncompressed to a gzip client, serialise seconds, its share)
        self.window = Window()
        self.compression = False
        self.encoding = "identity"  # of the last response (for the evidence)

    def size_attrs(self, encoding: str, status: int, scheme: str) -> dict[str, Any]:
        """Attributes of ``http.server.response.body.size``: the conventions' (method, route, status, scheme)
        and the response's content coding."""
        key = (encoding, status, scheme)
        attrs = self.by_encoding.get(key)
        if attrs is None:
            value = encoding.strip().lower() or "identity"
            if value == "x-gzip":
                value = "gzip"
            elif value not in ENCODINGS:
                value = "other"
            attrs = {"http.request.method": self.method, **self.attrs, "http.response.status_code": status,
                     "url.scheme": scheme, "http.response.header.content-encoding": value}
            if status >= 500:
                attrs["error.type"] = str(status)
            if len(self.by_encoding) < 32:
                self.by_encoding[key] = attrs
        return attrs


class _BodyCounter:
    """Placed below a compression middleware: counts the body bytes it is given (``.app`` kept)."""

    __slots__ = ("app", "active")

    def __init__(self, app: Any) -> None:
        self.app = app
        self.active = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = current_request.get() if scope["type"] == "http" and self.active else None
        if state is None:
            await self.app(scope, receive, send)
            return
        size = 0

        def send_counted(message: Any) -> Any:
            # Returns the outer send's awaitable: no frame of ours per message.
            nonlocal size
            if message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            return send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            data = state.signal_data()
            data[_UNCOMPRESSED] = data.get(_UNCOMPRESSED, 0) + size


def _take_out(parent: Any, counter: _BodyCounter) -> None:
    counter.active = False  # where it cannot be taken out, it passes through
    splice_out(parent, counter)


class ResponseSignal:
    name = "responses"

    def __init__(self) -> None:
        self._agent: Any = None
        self._size: Any = None
        self._uncompressed: Any = None
        self._serialize: Any = None
        self._large = 262144
        # method -> route -> its _Route (two lookups, no key built per request)
        self._routes: dict[str, dict[str | None, _Route]] = {}
        # The same method and route of other apps in the process (a test suite builds hundreds of apps
        # with a GET /): each endpoint its own statistics, never mixed with the first app's.
        self._other_apps: dict[tuple[str, str | None, Any], _Route] = {}
        self._route_count = 0
        self._active = False

    # -- lifecycle -----------------------------------------------------------------------------

    def instrument(self, agent: Any) -> None:
        self._agent = agent
        self._large = agent.settings.large_response_bytes
        # In a test suite one response over the threshold is a fact to report at once; a service
        # waits for the window's majority (one export is not the route's habit).
        self._report_each_large = agent.settings.test_mode
        self._size = histogram(
            agent,
            "http.server.response.body.size",
            "By",
            "Size of HTTP server response bodies: the bytes sent (after any compression), by route and content coding.",
            MEAN_ONLY,
        )
        self._uncompressed = histogram(
            agent,
            "fastapi_doctor.response.body.uncompressed_size",
            "By",
            "Response body bytes before the compression middleware, by route.",
            MEAN_ONLY,
        )
        self._serialize = histogram(
            agent,
            "fastapi_doctor.response.serialize.duration",
            "s",
            "Time to validate, encode and render response content, by route.",
            ROUTE_DURATION_BUCKETS,
        )
        self._active = True
        installs = agent.instrumentation
        installs.on_request_finished(self._finished)
        installs.on_fastapi(self._on_fastapi)

    def uninstrument(self) -> None:
        self._active = False  # stacks built from now on get no body counter

    def _on_fastapi(self, hooks: Any) -> None:
        if not self._active:
            return
        installs = self._agent.instrumentation
        installs.add(hooks.stack_wrappers, self._wrap_stack)
        import fastapi.routing
        import starlette.responses

        if getattr(fastapi.routing, "serialize_response", None) is not None:
            installs.patch(fastapi.routing, "serialize_response", _timed_serialize)
        json_response = starlette.responses.JSONResponse
        if json_response.__dict__.get("render") is not None:
            installs.patch(json_response, "render", _timed_render)

    def _wrap_stack(self, app: Any, stack: Any) -> Any:
        if not self._active:
            return stack
        for _, layer in list(walk(stack)):
            if isinstance(layer, _BodyCounter) or not _is_compression(layer):
                continue
            inner = getattr(layer, "app", None)
            if inner is None or isinstance(inner, _BodyCounter) or not callable(inner):
                continue
            counter = _BodyCounter(inner)
            layer.app = counter
            self._agent.instrumentation.record(functools.partial(_take_out, layer, counter), "body counter")
        return stack

    # -- after each response -------------------------------------------------------------------

    def _route(self, state: RequestState) -> _Route:
        route = state.route
        endpoint = getattr((state.scope or {}).get("route"), "endpoint", None)
        by_route = self._routes.get(state.method)
        stats = by_route.get(route) if by_route is not None else None
        if stats is None:
            stats = self._new(state.method, route, endpoint)
            if stats is not None:
                self._routes.setdefault(state.method, {})[route] = stats
        elif stats.endpoint is not endpoint:
            key = (state.method, route, endpoint)
            stats = self._other_apps.get(key)
            if stats is None:
                stats = self._new(state.method, route, endpoint)
                if stats is not None:
                    self._other_apps[key] = stats
        return stats if stats is not None else _Route(state.method, route, endpoint, None)

    def _new(self, method: str, route: str | None, endpoint: Any) -> _Route | None:
        """Statistics for one more endpoint, while under the bound (beyond it, nothing is kept)."""
        if self._route_count >= 10000:
            return None
        self._route_count += 1
        location = location_of(code_of(endpoint)) if endpoint is not None else None
        return _Route(method, route, endpoint, location)

    def _finished(self, state: RequestState) -> None:
        if state.status is None:
            return  # no response was started
        stats = self._route(state)
        sent = state.body_bytes
        encoding = state.content_encoding
        attrs = stats.size_attrs(encoding, state.status, state.scope.get("scheme", "http"))
        self._size.record(sent, attrs)
        stats.encoding = attrs["http.response.header.content-encoding"]
        data = state.data
        if data:
            uncompressed = data.get(_UNCOMPRESSED)
            if uncompressed is not None:
                self._uncompressed.record(uncompressed, stats.attrs)
                stats.compression = True
        serialize = state.serialize_s
        if serialize:
            self._serialize.record(serialize, stats.attrs)
        exposed = 0
        if (
            sent > self._large
            and encoding == "identity"
            and compressible(getattr(state, "content_type", None))
            and accepts_gzip(state.scope)
        ):
            exposed = sent
        duration = state.duration
        share = serialize / duration if duration > 0 else 0.0
        flag = exposed > 0 or (share > 0.5 and serialize >= SHARE_FLOOR_S)
        if stats.window.add((sent, exposed, serialize, share), flag) or (exposed and self._report_each_large):
            self._report(stats)

    def _report(self, stats: _Route) -> None:
        try:
            window = stats.window
            self._agent.report(ResponseWindow(
                method=stats.method,
                route=stats.route,
                location=stats.location,
                responses=window.count,
                window=len(window.items),
                p50_bytes=window.p50(0),
                p50_exposed_bytes=window.p50(1),
                serialize_p50_s=window.p50(2),
                serialize_share_p50=window.p50(3),
                compression_middleware=stats.compression,
                content_encoding=stats.encoding,
            ))
        except Exception as exc:
            containment.report("response finding", exc)


def _timed_serialize(original: Any) -> Any:
    @functools.wraps(original)
    async def serialize_response(*args: Any, **kwargs: Any) -> Any:
        state = current_request.get()
        if state is None:
            return await original(*args, **kwargs)
        start = perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            state.serialize_s += perf_counter() - start

    return serialize_response


def _timed_render(original: Any) -> Any:
    @functools.wraps(original)
    def render(self: Any, content: Any) -> bytes:
        state = current_request.get()
        if state is None:
            return original(self, content)  # type: ignore[no-any-return]
        start = perf_counter()
        try:
            return original(self, content)  # type: ignore[no-any-return]
        finally:
            state.serialize_s += perf_counter() - start

    return render
