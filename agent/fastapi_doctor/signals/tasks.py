"""Asyncio tasks by creator: created, alive after their request, destroyed while pending (``task_leak``).

A task factory on each loop the app runs on (chained to the app's own factory, if it set one) sees every
task created. The task's coroutine code tells at once whose it is: a coroutine of a library or of the
server (uvicorn's per-request task, Starlette's stream and middleware tasks) costs one dictionary look-up
and is left alone. A coroutine of the app's own code is a *creator*, resolved once per coroutine to the
user's line that created it (``create_task``, ``ensure_future``, a ``TaskGroup`` or anyio's
``start_soon``), never per task.

The app's tasks created inside a request are noted (a weak reference) in the request's signal data; when
the request finishes, those still pending are watched. Tasks the app creates outside any request
(workers started in the lifespan) are watched from their creation. Once a second, on the loop's
heartbeat, the watched tasks are counted by creator (the ones done or gone are dropped) and the rule
(:mod:`fastapi_doctor.diagnosis.task_leak`) decides. The loop's exception handler (chained too) counts
"Task was destroyed but it is pending!" and "Task exception was never retrieved" by creator: it may run
inside a garbage collection, in any thread, so it only increments counters.

No strong reference to a task is ever kept: a task the app drops is collected as it would be without
the agent.
"""

from __future__ import annotations

import asyncio
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from opentelemetry.metrics import Observation

from fastapi_doctor import attribution, containment
from fastapi_doctor.context import RequestState, current_request
from fastapi_doctor.observations import CreatorCounted, CreatorObservation
from fastapi_doctor.findings import Location
from fastapi_doctor.kernel.loop import hub

_monotonic = time.monotonic
_Task = asyncio.Task

_TASKS = "asyncio.tasks"  # the request's signal data: [(weakref to task, creator, created at), ...]
CYCLE_S = 1.0  # how often watched tasks are counted and the rule runs
GROWTH_WINDOW_S = 60.0
MAX_CREATORS = 256  # distinct coroutines of the app's code followed (series are per creator)
MAX_WATCHED = 10_000  # tasks followed after their request at once; beyond, they are counted as dropped
MAX_ROUTES = 8  # routes named per creator

DESTROYED_PENDING = "Task was destroyed but it is pending!"
NEVER_RETRIEVED = "Task exception was never retrieved"

_UNSEEN = object()


class Creator:
    """Tasks of one coroutine of the app's code, created at one line. Counters only grow."""

    __slots__ = (
        "coroutine",
        "location",
        "attrs",
        "created",
        "outlived",
        "aged",
        "destroyed_pending",
        "never_retrieved",
        "alive",
        "oldest_age_s",
        "routes",
        "samples",
    )

    def __init__(self, coroutine: str, location: Location | None) -> None:
        self.coroutine = coroutine
        self.location = location
        attrs: dict[str, Any] = {"fastapi_doctor.asyncio.coroutine": coroutine}
        if location is not None:
            attrs["code.file.path"] = location.file
            attrs["code.line.number"] = location.line
            attrs["code.function.name"] = location.function
        self.attrs = attrs
        self.created = 0
        self.outlived = 0
        self.aged = 0
        self.destroyed_pending = 0
        self.never_retrieved = 0
        self.alive = 0
        self.oldest_age_s = 0.0
        # (method, route) of the requests whose tasks outlived them -> how many.
        self.routes: dict[tuple[str, str | None], int] = {}
        self.samples: deque[tuple[float, int]] = deque(maxlen=int(GROWTH_WINDOW_S / CYCLE_S) + 1)

    def growth_per_minute(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) * 60.0 / (t1 - t0) if t1 > t0 else 0.0

    def observation(self) -> CreatorObservation:
        ranked = sorted(self.routes.items(), key=lambda item: -item[1])
        method, route = ranked[0][0] if ranked else (None, None)
        return CreatorObservation(
            coroutine=self.coroutine,
            location=self.location,
            created=self.created,
            alive=self.alive,
            oldest_age_s=self.oldest_age_s,
            outlived=self.outlived,
            aged=self.aged,
            destroyed_pending=self.destroyed_pending,
            never_retrieved=self.never_retrieved,
            growth_per_minute=self.growth_per_minute(),
            method=method,
            route=route,
            routes=tuple(f"{m} {r}" for (m, r), _ in ranked if r is not None),
        )


class _Watched:
    """A task of the app's code still pending after its request (or created outside any request)."""

    __slots__ = ("ref", "creator", "created", "finished", "aged")

    def __init__(self, ref: weakref.ref[Any], creator: Creator, created: float, finished: float | None) -> None:
        self.ref = ref
        self.creator = creator
        self.created = created
        self.finished = finished  # when its request finished; None when created outside any request
        self.aged = False


class TaskSignal:
    name = "tasks"

    def __init__(self) -> None:
        self._agent: Any = None
        self._active = False
        self._leak_s = 30.0
        # Coroutine code -> its creator, or None for code that is not the app's.
        self._creators: dict[types.CodeType, Creator | None] = {}
        self._watched: list[_Watched] = []
        self.dropped = 0  # tasks not followed because MAX_WATCHED were
        # loop -> (its factory before ours, ours, its exception handler before ours, ours)
        self._loops: dict[Any, tuple[Any, Any, Any, Any]] = {}
        self._before: dict[Creator, CreatorObservation] = {}
        self._next_cycle = 0.0
        # Test mode: watched tasks that ended cancelled, with their loop (see _ended).
        self._cancelled: list[tuple[_Watched, Any]] = []
        self._watch_cancels = False

    # -- install / undo ------------------------------------------------------------------------

    def instrument(self, agent: Any) -> None:
        global _current
        self._agent = agent
        self._leak_s = float(agent.settings.task_leak_seconds)
        self._watch_cancels = bool(agent.settings.test_mode)
        self._active = True
        _create_instruments(agent.meter)
        _current = self
        installs = agent.instrumentation
        installs.record(self._restore_loops, "tasks")  # every loop attached until the undo; undone last
        installs.add(hub.tick_callbacks, self._tick)
        installs.on_request_finished(self._finished)
        hub.acquire(self, agent)
        for hb in list(hub.heartbeats.values()):
            self.loop_attached(hb)

    def uninstrument(self) -> None:
        """Tasks created from now on are not followed (the loops get their factories back with the
        agent's other installs)."""
        self._active = False

    def _restore_loops(self) -> None:
        """Every loop gets back the task factory and exception handler it had, unless they were replaced
        since ours. A closed loop keeps what it had: nothing runs on it any more."""
        global _current
        for loop, (factory_before, factory, handler_before, handler) in list(self._loops.items()):
            try:
                if loop.get_task_factory() is factory:
                    loop.set_task_factory(factory_before)
                if _exception_handler(loop) is handler:
                    loop.set_exception_handler(handler_before)
            except Exception as exc:
                containment.report("tasks uninstrument", exc)
        self._loops.clear()
        if _current is self:
            _current = None

    def after_fork(self) -> None:
        """In a forked worker: the parent's loops and tasks do not exist here."""
        self._loops.clear()
        self._watched = []
        for creator in self._creators.values():
            if creator is not None:
                creator.samples.clear()

    def loop_attached(self, hb: Any) -> None:
        """Called by the heartbeat hub for each loop the app runs on, on that loop's thread."""
        loop = hb.loop
        if not self._active or loop in self._loops:
            return
        factory_before = loop.get_task_factory()
        handler_before = _exception_handler(loop)
        factory = self._task_factory(factory_before)
        handler = self._exception_handler(handler_before)
        loop.set_task_factory(factory)
        loop.set_exception_handler(handler)
        self._loops[loop] = (factory_before, factory, handler_before, handler)

    # -- every task ----------------------------------------------------------------------------

    def _task_factory(self, before: Any) -> Callable[..., Any]:
        creators = self._creators
        get_request = current_request.get

        def task_factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
            task = before(loop, coro, **kwargs) if before is not None else _Task(coro, loop=loop, **kwargs)
            try:
                creator = creators.get(getattr(coro, "cr_code", None), _UNSEEN)
                if creator is None or not self._active:
                    return task
                if creator is _UNSEEN:
                    creator = self._resolve(coro)
                    if creator is None:
                        return task
                creator.created += 1
                state = get_request()
                if state is not None and not state.finished:
                    data = state.signal_data()
                    tasks = data.get(_TASKS)
                    if tasks is None:
                        tasks = data[_TASKS] = []
                    tasks.append((weakref.ref(task), creator, _monotonic()))
                else:
                    self._watch(_Watched(weakref.ref(task), creator, _monotonic(), None))
            except Exception as exc:
                containment.report("task factory", exc)
            return task

        return task_factory

    def _resolve(self, coro: Any) -> Creator | None:
        """The creator of a coroutine seen for the first time (None: not the app's code)."""
        code = getattr(coro, "cr_code", None)
        if code is None:
            return None
        creator: Creator | None = None
        if not attribution.is_library_file(code.co_filename) and len(self._creators) < MAX_CREATORS:
            # From here outwards: the agent, asyncio's or anyio's create_task, then the app's line.
            creator = Creator(code.co_qualname, attribution.caller_location(skip=1))
        self._creators[code] = creator
        return creator

    def _watch(self, watched: _Watched) -> None:
        if len(self._watched) >= MAX_WATCHED:
            self.dropped += 1
            return
        self._watched.append(watched)

    def _exception_handler(self, before: Any) -> Callable[[Any, dict[str, Any]], None]:
        creators = self._creators

        def exception_handler(loop: Any, context: dict[str, Any]) -> None:
            # May run inside a garbage collection in any thread: count, take no lock, log nothing.
            try:
                message = context.get("message")
                if message == DESTROYED_PENDING or message == NEVER_RETRIEVED:
                    task = context.get("task") or context.get("future")
                    creator = creators.get(getattr(task.get_coro(), "cr_code", None))
                    if creator is not None:
                        if message == DESTROYED_PENDING:
                            creator.destroyed_pending += 1
                        else:
                            creator.never_retrieved += 1
            except Exception:
                pass
            if before is not None:
                before(loop, context)
            else:
                loop.default_exception_handler(context)

        return exception_handler

    # -- after each request, and once a second -------------------------------------------------

    def _finished(self, state: RequestState) -> None:
        data = state.data
        if not data:
            return
        tasks = data.pop(_TASKS, None)
        if not tasks:
            return
        now = _monotonic()
        key = (state.method, state.route)
        for ref, creator, created in tasks:
            task = ref()
            if task is None or task.done():
                continue
            creator.outlived += 1
            routes = creator.routes
            if key in routes or len(routes) < MAX_ROUTES:
                routes[key] = routes.get(key, 0) + 1
            watched = _Watched(ref, creator, created, now)
            self._watch(watched)
            if self._watch_cancels:
                task.add_done_callback(partial(self._ended, watched))

    def _ended(self, watched: _Watched, task: Any) -> None:
        """Test mode: a task that outlived its request ended. Cancelled, it may have been cut off by its
        loop's shutdown (a TestClient without ``with`` closes the loop as soon as the request returns,
        cancelling what is pending): the cycle decides once the loop is closed."""
        if task.cancelled():
            self._cancelled.append((watched, task.get_loop()))

    def _tick(self, _hb: Any, now: float, _lag: float) -> None:
        if now < self._next_cycle:
            return
        self._next_cycle = now + CYCLE_S
        self.cycle(now)

    def settle(self) -> None:
        """Decide now as if the limit had passed (``Agent.settle``: the pytest plugin at the end of a test,
        when the test's requests are over): a task its requests left pending is that test's leak."""
        self.cycle(_monotonic(), leak_seconds=0.0)

    def cycle(self, now: float, leak_seconds: float | None = None) -> None:
        """Count the watched tasks by creator, then let the rule decide for each creator."""
        alive: dict[Creator, int] = {}
        oldest: dict[Creator, float] = {}
        keep: list[_Watched] = []
        leak_s = self._leak_s if leak_seconds is None else leak_seconds
        if self._cancelled:
            alive = self._cut_off()  # counted as still pending: they were, until their loop closed
        for loop in [loop for loop in self._loops if loop.is_closed()]:
            del self._loops[loop]  # a loop per request (a TestClient without ``with``) is not kept
        for watched in self._watched:
            task = watched.ref()
            if task is None or task.done():
                continue
            keep.append(watched)
            creator = watched.creator
            alive[creator] = alive.get(creator, 0) + 1
            age = now - watched.created
            if age > oldest.get(creator, 0.0):
                oldest[creator] = age
            if watched.finished is not None and not watched.aged and now - watched.finished >= leak_s:
                watched.aged = True
                creator.aged += 1
        self._watched = keep
        for creator in list(self._creators.values()):
            if creator is None:
                continue
            creator.alive = alive.get(creator, 0)
            creator.oldest_age_s = oldest.get(creator, 0.0)
            creator.samples.append((now, creator.alive))
            before = self._before.get(creator)
            if before is not None and creator.alive == 0 and before.alive == 0 and (
                creator.aged == before.aged and creator.destroyed_pending == before.destroyed_pending
            ):
                continue  # nothing happened to this creator
            observation = creator.observation()
            self._before[creator] = observation
            self._agent.report(CreatorCounted(observation, before, leak_s))

    def _cut_off(self) -> dict[Creator, int]:
        """A task still pending when its loop shut down was pending at the end, as a task still pending
        at the end of a test is (``settle``); one the app cancelled while its loop ran is not."""
        cut_off: dict[Creator, int] = {}
        pending: list[tuple[_Watched, Any]] = []
        for watched, loop in self._cancelled:
            if loop.is_running():
                continue  # cancelled by the app
            if not loop.is_closed():
                pending.append((watched, loop))  # stopping: decided when closed
            elif not watched.aged:
                watched.aged = True
                watched.creator.aged += 1
                cut_off[watched.creator] = cut_off.get(watched.creator, 0) + 1
        self._cancelled = pending
        return cut_off

    def creators(self) -> list[Creator]:
        return [c for c in list(self._creators.values()) if c is not None]


def _exception_handler(loop: Any) -> Any:
    get = getattr(loop, "get_exception_handler", None)
    return get() if get is not None else None


# --- instruments, read on the collection cycle ------------------------------------------------------

_current: TaskSignal | None = None


def _observe(read: Callable[[Creator], float]) -> Callable[[Any], Iterable[Observation]]:
    def callback(_options: Any) -> Iterable[Observation]:
        signal = _current
        if signal is None:
            return []
        return [Observation(read(c), c.attrs) for c in signal.creators()]

    return callback


# (name under fastapi_doctor.asyncio.tasks, kind, unit, description, what it reads of a creator)
_INSTRUMENTS: tuple[tuple[str, str, str, str, Callable[[Creator], float]], ...] = (
    ("alive", "gauge", "{task}", "Tasks of the app's code still pending after the request that created them, or "
     "created outside any request, by creator (counted once a second).", lambda c: c.alive),
    ("oldest_age", "gauge", "s", "Age of the oldest of those tasks, by creator.", lambda c: c.oldest_age_s),
    ("created", "counter", "{task}", "Tasks of the app's code created, by creator.", lambda c: c.created),
    ("leaked", "counter", "{task}", "Tasks still pending when the request that created them finished, by creator.",
     lambda c: c.outlived),
    ("destroyed_pending", "counter", "{task}",
     "Pending tasks destroyed by the garbage collector (nothing kept a reference), by creator.",
     lambda c: c.destroyed_pending),
    ("exceptions_never_retrieved", "counter", "{task}",
     "Tasks that failed with an exception nobody retrieved, by creator.", lambda c: c.never_retrieved),
)
# Module-level callbacks: a second instrument() in the same process gets the same instruments back.
_CALLBACKS = {name: _observe(read) for name, _kind, _unit, _description, read in _INSTRUMENTS}


def _create_instruments(meter: Any) -> None:
    for name, kind, unit, description, _read in _INSTRUMENTS:
        create = meter.create_observable_gauge if kind == "gauge" else meter.create_observable_counter
        create(f"fastapi_doctor.asyncio.tasks.{name}", callbacks=[_CALLBACKS[name]], unit=unit, description=description)

