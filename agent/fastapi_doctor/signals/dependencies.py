"""Time per dependency (``dependency_rebuild``): every ``Depends`` callable, per route.

One narrow patch point: ``fastapi.routing.solve_dependencies``, the entry FastAPI calls once per
request with the route's dependency tree. The first time a tree is seen, the callable of each of its
sub-dependencies is replaced in place by a timer of the same kind (sync, async, generator, async
generator; classes and callable instances stay sync or async as FastAPI judges them), so every
route is covered, also routes and routers added after start-up. FastAPI's per-request cache
(``use_cache``) decides before the callable is called, so a cached value is not counted as a build.
One timer per callable, so FastAPI's dependency cache (keyed by the callable) works as before. A
dependency named in ``app.dependency_overrides`` keeps its original callable (FastAPI looks the
override up by it) and gets its timer back when the override goes. ``uninstrument`` puts the
original callables back.

Generator dependencies count their set-up and their teardown, not the time the request spends
between the two. A dependency's time is kept in the request's state; after the response the
request hook records ``fastapi_doctor.dependency.duration``.

The time is a metric, never a finding: a slow dependency may be waiting (for a pool connection, the
loop, a query, a remote service), and what it waits for gets the finding. ``dependency_rebuild`` rests
on evidence of the rebuild: a known-expensive object (:data:`EXPENSIVE_CLASSES`: HTTP clients and
sessions, SQLAlchemy session factories, pydantic settings that parse the environment and files)
built inside requests by the same line ``REBUILD_REPEATS`` times (counted by
:mod:`fastapi_doctor.kernel.rebuilds`), or a sync dependency computing the same thing again: more than
``FASTAPI_DOCTOR_SLOW_DEPENDENCY_MS`` of its own CPU time (the thread's, so waiting never counts) on
the same inputs ``REBUILD_REPEATS`` times. The rule (:mod:`fastapi_doctor.diagnosis.dependency_rebuild`)
decides and words the finding. SQLAlchemy engines built inside requests are counted the same way by
the database signal.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterator
from time import perf_counter, thread_time
from typing import Any

from fastapi_doctor import attribution, containment
from fastapi_doctor.context import RequestState, current_request
from fastapi_doctor.findings import Location
from fastapi_doctor.kernel.frames import code_of, location_of, name_of
from fastapi_doctor.kernel.loop import stall_clock, stalled_between
from fastapi_doctor.kernel.metrics import ROUTE_DURATION_BUCKETS, histogram
from fastapi_doctor.kernel.rebuilds import RebuildSites

# -- timers that stand in for dependency callables -----------------------------------------------

_KEY = "dependencies"  # per-request list of (timer, seconds) in RequestState.data


class _Stats:
    """One (dependency, route): its metric attributes, built once."""

    __slots__ = ("attrs",)

    def __init__(self, name: str, route: str | None) -> None:
        self.attrs: dict[str, Any] = {"fastapi_doctor.dependency": name}
        if route is not None:
            self.attrs["http.route"] = route


class _Timed:
    """Stands in for a dependency callable; a subclass per kind of callable."""

    def __init__(self, original: Any, name: str, location: Location | None) -> None:
        # What FastAPI and inspect look at: __wrapped__ leads to the original callable.
        self.__wrapped__ = original
        self.__name__ = getattr(original, "__name__", name)
        self.__qualname__ = name
        self.__module__ = getattr(original, "__module__", None) or type(original).__module__
        self.__doc__ = getattr(original, "__doc__", None)
        self.dependency = name
        self.location = location
        self.stats: dict[str | None, _Stats] = {}
        # Sync callables: a build spending more CPU than this is a computation (see _SyncTimed).
        self.sites: RebuildSites | None = None
        self.cpu_limit_s = float("inf")
        self.slow = False  # the last build took longer than cpu_limit_s

    def __repr__(self) -> str:
        return f"<timed dependency {self.__wrapped__!r}>"

    # Equal to the callable it stands in for, with the same hash: FastAPI looks dependencies up in
    # app.dependency_overrides by their callable, and an override added at any moment (even by an
    # earlier dependency of the same request) must find the original behind the timer.
    def __eq__(self, other: object) -> bool:
        return other is self or other is self.__wrapped__

    def __hash__(self) -> int:
        return hash(self.__wrapped__)

    def _done(self, state: RequestState, seconds: float) -> None:
        """``seconds`` the whole (a generator's teardown included)."""
        try:
            data = state.signal_data()
            samples = data.get(_KEY)
            if samples is None:
                data[_KEY] = samples = []
            samples.append((self, seconds))
        except Exception as exc:
            containment.report("dependency timing", exc)


class _SyncTimed(_Timed):
    """A sync callable runs alone in its worker thread: the thread's CPU time is its own work, never
    time spent waiting (for the GIL, a lock, the pool, the network). A build spending more than
    ``cpu_limit_s`` of it is a computation; the same one on the same inputs in every request is rebuilt."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state = current_request.get()
        if state is None:
            return self.__wrapped__(*args, **kwargs)
        # The thread's CPU clock is a system call (about 2.6 us here, against 0.2 us for perf_counter):
        # read only while the builds are slower than the limit (CPU time never exceeds wall time).
        cpu = thread_time() if self.slow else None
        start = perf_counter()
        try:
            return self.__wrapped__(*args, **kwargs)
        finally:
            seconds = perf_counter() - start
            self._done(state, seconds)
            self.slow = seconds > self.cpu_limit_s
            if cpu is not None and self.sites is not None:
                spent = thread_time() - cpu
                if spent > self.cpu_limit_s:
                    self.sites.computed(self.dependency, self.location, state.method, state.route, spent, (args, kwargs))


class _AsyncTimed(_Timed):
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state = current_request.get()
        stalled = stall_clock()
        start = perf_counter()
        try:
            return await self.__wrapped__(*args, **kwargs)
        finally:
            if state is not None:
                # Time the loop was blocked by someone else while this awaited is not this one's.
                self._done(state, max(perf_counter() - start - stalled_between(stalled), 0.0))


class _TimedIterator:
    """Forwards next/send/throw/close to a generator and adds up the time spent inside it."""

    __slots__ = ("gen", "elapsed")

    def __init__(self, gen: Any) -> None:
        self.gen = gen
        self.elapsed = 0.0

    def __iter__(self) -> _TimedIterator:
        return self

    def __next__(self) -> Any:
        start = perf_counter()
        try:
            return next(self.gen)
        finally:
            self.elapsed += perf_counter() - start

    def send(self, value: Any) -> Any:
        start = perf_counter()
        try:
            return self.gen.send(value)
        finally:
            self.elapsed += perf_counter() - start

    def throw(self, *args: Any) -> Any:
        start = perf_counter()
        try:
            return self.gen.throw(*args)
        finally:
            self.elapsed += perf_counter() - start

    def close(self) -> None:
        start = perf_counter()
        try:
            self.gen.close()
        finally:
            self.elapsed += perf_counter() - start


class _GenTimed(_Timed):
    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        state = current_request.get()
        gen = self.__wrapped__(*args, **kwargs)
        if state is None:
            return (yield from gen)
        timed = _TimedIterator(gen)
        try:
            # yield from delegates send/throw/close exactly as to the generator itself.
            return (yield from timed)
        finally:
            self._done(state, timed.elapsed)


class _AsyncGenTimed(_Timed):
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state = current_request.get()
        agen = self.__wrapped__(*args, **kwargs)
        elapsed = 0.0
        try:
            stalled, start = stall_clock(), perf_counter()
            try:
                value = await agen.__anext__()
            finally:
                elapsed += perf_counter() - start - stalled_between(stalled)
            while True:
                try:
                    sent = yield value
                except GeneratorExit:
                    stalled, start = stall_clock(), perf_counter()
                    try:
                        await agen.aclose()
                    finally:
                        elapsed += perf_counter() - start - stalled_between(stalled)
                    raise
                except BaseException as exc:
                    stalled, start = stall_clock(), perf_counter()
                    try:
                        value = await agen.athrow(exc)
                    finally:
                        elapsed += perf_counter() - start - stalled_between(stalled)
                else:
                    stalled, start = stall_clock(), perf_counter()
                    try:
                        value = await agen.asend(sent)
                    finally:
                        elapsed += perf_counter() - start - stalled_between(stalled)
        except StopAsyncIteration:
            return
        finally:
            if state is not None:
                self._done(state, max(elapsed, 0.0))


_TIMERS: dict[str, type[_Timed]] = {
    "sync": _SyncTimed,
    "async": _AsyncTimed,
    "gen": _GenTimed,
    "asyncgen": _AsyncGenTimed,
}

# -- the signal -------------------------------------------------------------------------------

_MAX_ROOTS = 10_000

# (module, class): objects meant to be built once (what one per request costs: dependency_rebuild.COSTS).
EXPENSIVE_CLASSES = (
    ("httpx", "Client"),
    ("httpx", "AsyncClient"),
    ("aiohttp", "ClientSession"),
    ("requests", "Session"),
    ("sqlalchemy.orm", "sessionmaker"),
    ("sqlalchemy.ext.asyncio", "async_sessionmaker"),
    ("pydantic_settings", "BaseSettings"),
)


class DependencySignal:
    name = "dependencies"

    def __init__(self) -> None:
        self._agent: Any = None
        self._histogram: Any = None
        self._classify: Callable[[Any], str] | None = None
        self._roots: dict[int, Any] = {}  # id -> root Dependant already covered (kept alive)
        self._nodes: dict[int, Any] = {}  # id -> every Dependant of the covered trees (kept alive)
        self._utils: Any = None
        self._watching_rebuilt_trees = False
        self._override_keys: tuple[Any, ...] = ()  # app.dependency_overrides keys last seen
        self._override_ids: frozenset[int] = frozenset()
        self._timers: dict[int, _Timed | None] = {}  # id(original callable) -> its timer (None: not timed)
        # (Dependant, original call): switched by app.dependency_overrides, put back at the undo.
        self._originals: list[tuple[Any, Any]] = []
        self._sites: RebuildSites | None = None
        self._cpu_limit_s = float("inf")
        self._active = False

    # -- lifecycle -----------------------------------------------------------------------------

    def instrument(self, agent: Any) -> None:
        self._agent = agent
        self._sites = RebuildSites(agent.report)
        self._cpu_limit_s = agent.settings.slow_dependency_ms / 1000.0
        self._histogram = histogram(
            agent,
            "fastapi_doctor.dependency.duration",
            "s",
            "Time to build a FastAPI dependency (generator dependencies: set-up and teardown), per route.",
            ROUTE_DURATION_BUCKETS,
        )
        self._active = True
        installs = agent.instrumentation
        installs.on_request_finished(self._finished)
        installs.on_fastapi(self._on_fastapi)
        for module in dict.fromkeys(m for m, _ in EXPENSIVE_CLASSES):
            installs.when_imported(module, self._on_client_library)

    def uninstrument(self) -> None:
        self._active = False

    def _restore_calls(self) -> None:
        """The undo of the timers: every covered dependency gets its own callable back."""
        for dependant, original in reversed(self._originals):
            dependant.call = original
        self._originals.clear()
        self._roots.clear()
        self._nodes.clear()
        self._override_keys, self._override_ids = (), frozenset()
        self._timers.clear()
        self._utils = None
        self._watching_rebuilt_trees = False

    # -- FastAPI: the patch point --------------------------------------------------------------

    def _on_fastapi(self, hooks: Any) -> None:
        if not self._active:
            return
        import fastapi.dependencies.utils
        import fastapi.routing

        self._classify = _fastapi_classifier()
        if getattr(fastapi.routing, "solve_dependencies", None) is None or self._classify is None:
            return
        installs = self._agent.instrumentation
        installs.record(self._restore_calls, "dependency timers")
        installs.patch(fastapi.routing, "solve_dependencies", self._solving)
        self._utils = fastapi.dependencies.utils

    def _solving(self, original: Any) -> Any:
        """FastAPI's ``solve_dependencies`` (in ``fastapi.routing``) covering each route's tree once."""
        roots = self._roots
        cover = self._cover
        sync_overrides = self._sync_overrides
        signal = self

        @functools.wraps(original)
        def solve_dependencies(*args: Any, **kwargs: Any) -> Any:
            # Returns FastAPI's own coroutine: no extra frame per request.
            provider = kwargs.get("dependency_overrides_provider")
            overrides = getattr(provider, "dependency_overrides", None) if provider is not None else None
            if overrides or signal._override_keys:
                sync_overrides(overrides)
            dependant = kwargs.get("dependant")
            if dependant is not None and id(dependant) not in roots:
                cover(dependant)
            return original(*args, **kwargs)

        return solve_dependencies

    def _sync_overrides(self, overrides: Any) -> None:
        """Dependencies named in ``app.dependency_overrides`` keep their original callable."""
        try:
            keys = tuple(overrides) if overrides else ()
            if keys == self._override_keys:
                return
            self._override_keys = keys
            ids = frozenset(id(k) for k in keys)
            self._override_ids = ids
            for dependant, original in self._originals:
                timer = self._timers.get(id(original))
                if timer is None:
                    continue
                if id(original) in ids:
                    if dependant.call is timer:
                        dependant.call = original
                elif dependant.call is original:
                    dependant.call = timer
            if ids:
                self._watch_rebuilt_trees()
        except Exception as exc:
            containment.report("dependency overrides", exc)

    def _watch_rebuilt_trees(self) -> None:
        """With ``app.dependency_overrides`` set, FastAPI builds the dependencies under each route's
        direct ones again on every request (from the signatures): time those as FastAPI meets them."""
        utils = self._utils
        if self._watching_rebuilt_trees or utils is None or not self._active:
            return
        if getattr(utils, "solve_dependencies", None) is None:
            return
        self._watching_rebuilt_trees = True
        nodes = self._nodes
        cover_children = self._cover_children

        def recursion(original: Any) -> Any:
            @functools.wraps(original)
            def solve_dependencies(*args: Any, **kwargs: Any) -> Any:
                dependant = kwargs.get("dependant")
                if dependant is not None and id(dependant) not in nodes:
                    cover_children(dependant)  # built for this request only: no undo needed
                return original(*args, **kwargs)

            return solve_dependencies

        self._agent.instrumentation.patch(utils, "solve_dependencies", recursion)

    def _cover(self, root: Any) -> None:
        """Put timers on every sub-dependency of ``root`` (once per tree)."""
        try:
            if len(self._roots) >= _MAX_ROOTS:
                return
            self._roots[id(root)] = root
            nodes = self._nodes
            pending = list(root.dependencies)
            while pending:
                dependant = pending.pop()
                if id(dependant) in nodes:
                    continue
                nodes[id(dependant)] = dependant
                pending.extend(dependant.dependencies)
                call = dependant.call
                if call is None or isinstance(call, _Timed):
                    continue
                timer = self._timer_for(call)
                if timer is not None:
                    self._originals.append((dependant, call))
                    if id(call) not in self._override_ids:
                        dependant.call = timer
        except Exception as exc:
            containment.report("dependency timers", exc)

    def _cover_children(self, dependant: Any) -> None:
        try:
            overridden = self._override_ids
            for child in dependant.dependencies:
                call = child.call
                if call is not None and not isinstance(call, _Timed) and id(call) not in overridden:
                    timer = self._timer_for(call)
                    if timer is not None:
                        child.call = timer
        except Exception as exc:
            containment.report("dependency timers", exc)

    def _timer_for(self, call: Any) -> _Timed | None:
        key = id(call)
        if key in self._timers:
            timer = self._timers[key]
            if timer is None or timer.__wrapped__ is call:
                return timer
        timer = None
        assert self._classify is not None
        kind = self._classify(call)
        name = name_of(call)
        code = code_of(call)
        candidate = _TIMERS[kind](call, name, location_of(code))
        # FastAPI must see the same kind of callable, or the dependency is left alone.
        if self._classify(candidate) == kind:
            timer = candidate
            timer.sites = self._sites
            timer.cpu_limit_s = self._cpu_limit_s
            if code is not None:
                attribution.register_code(code, "dependency", name)
        self._timers[key] = timer
        return timer

    # -- after each request --------------------------------------------------------------------

    def _finished(self, state: RequestState) -> None:
        data = state.data
        if not data:
            return
        samples = data.get(_KEY)
        if not samples:
            return
        route = state.route
        record = self._histogram.record
        for timer, seconds in samples:
            stats = timer.stats.get(route)
            if stats is None:
                stats = timer.stats[route] = _Stats(timer.dependency, route)
            record(seconds, stats.attrs)

    # -- expensive objects built inside requests -------------------------------------------------

    def _on_client_library(self, module: types.ModuleType) -> None:
        if not self._active:
            return
        for module_name, class_name in EXPENSIVE_CLASSES:
            if module_name != module.__name__:
                continue
            cls = getattr(module, class_name, None)
            if isinstance(cls, type):
                self._patch_init(cls, f"{module_name}.{class_name}")

    def _patch_init(self, cls: type, label: str) -> None:
        sites = self._sites
        assert sites is not None

        def counted(original: Any) -> Any:
            @functools.wraps(original)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                original(self, *args, **kwargs)
                if current_request.get() is not None:
                    sites.created(label, sys._getframe(1))

            return __init__

        self._agent.instrumentation.patch(cls, "__init__", counted)


def _fastapi_classifier() -> Callable[[Any], str] | None:
    """How FastAPI's solve_dependencies will call a callable: sync, async, gen or asyncgen."""
    try:
        import fastapi.dependencies.utils as utils
    except ImportError:
        return None
    is_gen = getattr(utils, "_is_gen_callable", None) or getattr(utils, "is_gen_callable", None)
    is_async_gen = getattr(utils, "_is_async_gen_callable", None) or getattr(utils, "is_async_gen_callable", None)
    is_coroutine = getattr(utils, "_is_coroutine_callable", None) or getattr(utils, "is_coroutine_callable", None)
    if is_gen is None or is_async_gen is None or is_coroutine is None:
        return None

    def classify(call: Any) -> str:
        if is_async_gen(call):
            return "asyncgen"
        if is_gen(call):
            return "gen"
        if is_coroutine(call):
            return "async"
        return "sync"

    return classify
