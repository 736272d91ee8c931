"""Event-loop lag and blocked episodes: ``blocking_io`` with the line that blocks.

Two parts, as in aiodebug's hang inspection:

* A **heartbeat** on each event loop the app runs on (a ``call_later`` chain every
  ``FASTAPI_DOCTOR_HEARTBEAT_MS``) stamps a monotonic time and records how late it ran
  (``fastapi_doctor.eventloop.lag``). The loop does not exist when the agent starts, so the heartbeat is
  started from inside the loop on the app's first ASGI call (lifespan or HTTP) by a probe in the
  middleware stack whose per-call cost is one identity check of the running loop.
* A **watchdog** daemon thread. When a loop has not ticked for ``FASTAPI_DOCTOR_LOOP_BLOCK_MS`` past its
  due time, it samples the loop thread's stack (``sys._current_frames()``) every few milliseconds until
  the loop ticks again, reducing each sample at once to code locations. At the end of the episode the
  most frequent (user line, call, root cause) wins: serialisation means ``large_payload``, a middleware's
  own code ``slow_middleware``, anything else ``blocking_io``.

An episode is blamed on the app's code only on evidence (:func:`judge`):

* the process ran: the loop thread's own CPU clock and the process's, read on each tick, and the
  watchdog's own wake-ups. When neither the loop thread nor the watchdog could run (SIGSTOP, a CPU
  limit's CFS throttling, a VM or container paused, steal) the process was paused: counted in
  ``fastapi_doctor.process.paused`` with the cgroup's throttling, never the line it stopped at;
* one call held the loop: the loop thread did not run (it waited in that call) or, when it ran, the
  same line was seen in at least two samples (a busy loop running many short callbacks is not one
  blocking call);
* not the agent's or OpenTelemetry's code: their stalls are the agent's cost
  (``fastapi_doctor.agent.loop_stalls``), never the app's blame;
* not a garbage collection pause (gc_pauses);
* not start-up: nothing before the app's first request (importing the app, the lifespan), and an
  occurrence becomes a finding only when it recurs (the same root cause, route and line twice): the
  first ``/openapi.json``, a route's first call warming a cache, are once per process.

The heartbeat machinery (``hub``, :mod:`fastapi_doctor.kernel.loop`) is shared with the threadpool,
GC and tasks signals, which read anyio's limiter, drain GC pauses and count tasks on the loop's tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
from collections import deque
from typing import Any

from fastapi_doctor import attribution, containment, routes
from fastapi_doctor.context import RequestState, active_requests, admissions, current_request
from fastapi_doctor.findings import Location
from fastapi_doctor.kernel import cgroup, gc_pauses
from fastapi_doctor.kernel.frames import code_of, location_of
from fastapi_doctor.kernel.loop import CLOCK_JUMP_S, Heartbeat, hub
from fastapi_doctor.kernel.metrics import histogram
from fastapi_doctor.observations import LoopBlock
from fastapi_doctor.run_delay import threads_cpu

_get_running_loop = asyncio._get_running_loop
_monotonic = time.monotonic

# The task running on each loop (asyncio and uvloop both run asyncio.Task, which maintains it).
_current_tasks: dict[Any, Any] | None = getattr(asyncio.tasks, "_current_tasks", None)

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WATCHDOG_THREAD_NAME = "fastapi-doctor-loop-watchdog"

# settle() waits for the watchdog's looks at most this many times this long.
SETTLE_WAITS = 40
SETTLE_WAIT_S = 0.05

_HANDLE_RUN = asyncio.events.Handle._run.__code__


def _loop_busy(hb: Heartbeat, frame: Any, stack: tuple[attribution.FrameInfo, ...]) -> bool | None:
    """Whether the loop thread is running a callback or a task (None: cannot tell)."""
    if hb.python_loop:
        return any(info.code is _HANDLE_RUN for info in stack)
    if _current_tasks is not None and _current_tasks.get(hb.loop) is not None:
        return True
    if hb.driver is not None:
        return frame is not hb.driver
    return None


def attach_running_loop() -> bool:
    """Watch the running loop now (apps that are not FastAPI, or code that runs before the first
    request). True when the loop is watched. What blocks it from then on is not start-up: the caller
    asked for it to be watched (an app without the agent's middleware admits no request)."""
    loop = _get_running_loop()
    hub.attach(loop)
    hub.watched_explicitly = True
    return loop is not None and loop in hub.heartbeats


# --- what held the loop: the evidence ---------------------------------------------------------

PAUSED, CONTENDED, STUCK, HELD, BUSY, STARVED = "paused", "contended", "stuck", "held", "busy", "starved"
# The share of a late tick's lateness that decides "ran" / "watched" (see judge).
EVIDENCE_SHARE = 0.5
# Below this share of the lateness on a CPU, the loop thread did not run: it was stopped.
STOPPED_SHARE = 0.1
# Samples that must show the same line for each verdict to blame it (absent: never blamed).
SAMPLES_NEEDED = {STUCK: 1, HELD: 1, BUSY: 2, STARVED: 2}
# A watchdog wake-up later than this is a stretch the watchdog could not watch.
WATCHDOG_GAP_FLOOR_S = 0.005
# Stalls of the loop in the agent's (or OpenTelemetry's) own code are shown on the doctor page once
# they add up to more than this share of the time the watchdog has run.
AGENT_STALL_BUDGET = 0.01
# Root-cause slot of a sample whose running code was the agent's (never a finding).
_AGENT_COST = "agent"


def judge(
    lag: float,
    window: float,
    loop_cpu: float | None,
    loop_runq: float | None,
    process_cpu: float | None,
    missed: float,
    longest_missed: float,
    watch: float,
    python_share: float = 1.0,
) -> str:
    """What held the event loop for ``lag`` seconds past its tick, from facts about that stretch.

    ``window``: seconds between the late tick and the one before it; ``loop_cpu``/``loop_runq``: time
    the loop thread spent on a CPU/ready but waiting for one in that window, ``process_cpu`` the
    whole process's CPU time (None: not measured); ``missed``/``longest_missed``: seconds in all/in
    one stretch the watchdog itself could not run while it should have been watching the loop
    (``watch`` seconds: from the threshold to the tick); ``python_share``: the share of the other threads'
    CPU time that threads running Python used (the rest ran in threads a C library started, such as
    argon2's lanes or a BLAS pool, which never hold the interpreter: a call that waits for them holds
    the loop as much as a sleep does).

    * PAUSED: for one stretch of at least half the lateness the watchdog could not run, and
      neither the loop thread (under a tenth of it on a CPU) nor another thread ran: the process
      was stopped or not scheduled (SIGSTOP, CFS throttling under a CPU limit, a paused VM,
      steal). Not the app's code.
    * HELD: the watchdog could not run for that long while the loop thread did run: one call held
      the interpreter (C code that keeps the GIL, a collection); the first sample after it shows
      the line that made the call.
    * CONTENDED: the loop and the watchdog waited while other threads of the process that run
      Python used the CPU (one of them held the interpreter). Not the loop's code. Threads a C
      library started for the loop's own call (argon2 hashes in parallel lanes) are not others:
      the loop waited in that call.
    * BUSY: the loop thread ran for most of it, and let the watchdog run: one call in Python, or
      many callbacks; only samples that agree show one line.
    * STARVED: the loop thread was ready to run but waited for a CPU (a busy machine): where it
      was preempted is not a cause (a socket write, more often than not); only a line of the app
      that most samples agree on is.
    * STUCK: the loop thread slept (neither on a CPU nor ready): it waited in one call (a sleep,
      blocking I/O, a lock); one sample shows that call.
    """
    if loop_cpu is None:
        return BUSY
    enough = EVIDENCE_SHARE * lag
    # Lower bounds of what happened while late: all of the window before the due time may have
    # been spent on a CPU, or waiting for one.
    before = max(window - lag, 0.0)
    late_cpu = loop_cpu - before
    others = process_cpu - loop_cpu if process_cpu is not None else 0.0
    interpreter = others * python_share  # of it, what threads that may hold the interpreter used
    if longest_missed >= enough:
        if late_cpu >= STOPPED_SHARE * lag:
            return HELD
        if others < enough:
            return PAUSED
        if interpreter >= enough:
            return CONTENDED
        # The process ran, in threads a C library started: the loop waited in the call that did.
    elif late_cpu >= enough:
        return BUSY
    elif interpreter >= enough:
        return CONTENDED
    if loop_runq is not None:
        slept = window - loop_cpu - loop_runq  # neither on a CPU nor ready: waiting in a call
        return STUCK if slept >= enough else STARVED
    # Without the scheduler's statistics: stuck only when the watchdog ran on time throughout.
    return STUCK if missed < EVIDENCE_SHARE * watch else STARVED


def _overlap(intervals: Any, start: float, end: float) -> tuple[float, float]:
    """Seconds of ``intervals`` ((start, end) pairs) inside [start, end]: in all, and the longest."""
    total = longest = 0.0
    for lo, hi in list(intervals):
        lo, hi = max(lo, start), min(hi, end)
        if hi > lo:
            total += hi - lo
            longest = max(longest, hi - lo)
    return total, longest


# --- blocked episodes ----------------------------------------------------------------------------


class _Episode:
    __slots__ = (
        "ticks",
        "due",
        "detected",
        "end",
        "lag",
        "state",
        "samples",
        "taken",
        "last_seen",
        "span_done",
        "serving",
        "window",
        "cpu",
        "runq",
        "process_cpu",
        "cpu_at_start",
    )

    def __init__(self, ticks: int, due: float, detected: float) -> None:
        self.ticks = ticks
        self.due = due
        self.detected = detected
        self.end: float | None = None
        self.lag: float | None = None
        self.state: RequestState | None = None
        # (location, call, root_cause, middleware) -> samples
        self.samples: dict[tuple[Location | None, str | None, str, str | None], int] = {}
        self.taken = 0
        self.last_seen: float | None = None  # when a sample last saw the loop held
        self.span_done = False
        # The app had admitted a request (or asked for its loop to be watched): not start-up.
        self.serving = admissions.value > 0 or hub.watched_explicitly
        # The late tick's window and CPU clocks (set by the tick that ends the episode).
        self.window = 0.0
        self.cpu: float | None = None
        self.runq: float | None = None
        self.process_cpu: float | None = None
        # Who used the CPU from the detection on: _cpu_by_kind when the episode was seen.
        self.cpu_at_start: tuple[float, float, float] | None = None


_LIFESPAN = ("starlette.routing", "lifespan")
_GC_CALLBACK = gc_pauses.callback.__code__


# The signal's counters: attribute -> (name, unit, description).
_COUNTERS = {
    "blocked": (
        "fastapi_doctor.eventloop.blocked",
        "{episode}",
        "Episodes in which the event loop was blocked longer than FASTAPI_DOCTOR_LOOP_BLOCK_MS.",
    ),
    "blocked_time": (
        "fastapi_doctor.eventloop.blocked_time",
        "s",
        "Time the event loop spent blocked in those episodes.",
    ),
    "paused": (
        "fastapi_doctor.process.paused",
        "{episode}",
        "Times the event loop was late because the process did not run at all (stopped, CPU-throttled, not scheduled).",
    ),
    "paused_time": ("fastapi_doctor.process.paused_time", "s", "Lateness of the event loop in those pauses."),
    "agent_stalls": (
        "fastapi_doctor.agent.loop_stalls",
        "{episode}",
        "Blocked episodes of the event loop spent in the agent's or OpenTelemetry's own code (the agent's cost).",
    ),
    "agent_stall_time": (
        "fastapi_doctor.agent.loop_stall_time",
        "s",
        "Time the event loop spent blocked in the agent's or OpenTelemetry's own code.",
    ),
}


class EventLoopSignal:
    name = "eventloop"

    def __init__(self) -> None:
        self.agent: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Looks the watchdog has finished, and the condition settle() waits on for the next one.
        self._looks = 0
        self._looked = threading.Condition()
        self.block_s = 0.1
        self.sample_s = 0.02
        self._attrs: dict[tuple[str | None, str | None], dict[str, str]] = {}
        self._stats: dict[tuple[str, str | None, tuple[str, str] | None], list[float]] = {}
        # Route template -> where its endpoint is defined (the location of a large payload).
        self._endpoints: dict[str, Location] = {}
        self.episodes_seen = 0  # attributed episodes, for tests and the report
        # The first block of each (root cause, method, route, function): handed again with the second.
        self._held: dict[tuple[str, str | None, str | None, tuple[str, str] | None], LoopBlock] = {}
        # Late ticks no episode saw (the watchdog did not run in time): (due, end, lag, window, loop
        # thread's CPU, its wait for a CPU, process CPU), appended on the loop, judged by the watchdog.
        self._unseen: deque[tuple[float, float, float, float, float, float | None, float]] = deque(maxlen=64)
        # Stretches the watchdog could not run (planned wake-up, actual), for judge().
        self._gaps: deque[tuple[float, float]] = deque(maxlen=256)
        self.started = _monotonic()
        self.paused_total = [0, 0.0]  # episodes, seconds
        self.agent_total = [0, 0.0]
        self._throttled: tuple[int, float] | None = None  # the cgroup's throttling at instrument()

    # -- lifecycle -----------------------------------------------------------------------------

    def instrument(self, agent: Any) -> None:
        self.agent = agent
        settings = agent.settings
        self.block_s = settings.loop_block_ms / 1000.0
        self.sample_s = min(0.02, max(0.005, self.block_s / 5))
        meter = agent.meter
        # Recorded on the loop on every tick: the agent's lean histogram (about 1 us, versus 100+ us for
        # the SDK's record on a loop that wakes up cold).
        self.lag = histogram(
            agent,
            "fastapi_doctor.eventloop.lag",
            unit="s",
            description="Lateness of the agent's heartbeat on the event loop (how long every ready task waited).",
            boundaries=LAG_BUCKETS,
        )
        for attribute, (name, unit, description) in _COUNTERS.items():
            setattr(self, attribute, meter.create_counter(name, unit=unit, description=description))
        self.started = _monotonic()
        self._throttled = cgroup.cgroup_throttling()
        self._stop.clear()
        installs = agent.instrumentation
        installs.add(hub.tick_callbacks, self._on_tick)
        hub.acquire(self, agent)
        installs.on_app(self._register_app)
        self._thread = threading.Thread(target=self._run, name=WATCHDOG_THREAD_NAME, daemon=True)
        self._thread.start()

    def uninstrument(self) -> None:
        """Stops the watchdog (the agent's instrumentation context takes back what instrument() added)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def settle(self) -> None:
        """Judge the loops' blocks so far now: wake the watchdog and wait, at most about two seconds, for a
        look that began after this call and left no block in progress.

        The pytest plugin calls it when a test's requests are over: a block is judged as that test's, and
        a heartbeat whose pending tick a jumped clock lost (freezegun let go) is restarted before the next
        test sends a request (otherwise a block in that request, before the watchdog's next look, was
        never seen). Counted in waits, not by the clock, which a test may have frozen."""
        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            return
        waits = SETTLE_WAITS
        with self._looked:
            wanted = self._looks + 2  # the look in progress, if any, began before this call
            while waits > 0:
                if self._looks >= wanted:
                    if all(hb.episode is None for hb in list(hub.heartbeats.values())):
                        return
                    wanted = self._looks + 1
                self._wake.set()
                self._looked.wait(SETTLE_WAIT_S)
                waits -= 1

    def loop_attached(self, hb: Heartbeat) -> None:
        self._wake.set()

    def after_fork(self) -> None:
        """A prefork worker: threads do not survive fork, so the child starts its own watchdog."""
        hub.after_fork()
        if self._thread is None or self._stop.is_set():
            return
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._looked = threading.Condition()  # the parent's watchdog may have held its lock at fork
        self._thread = threading.Thread(target=self._run, name=WATCHDOG_THREAD_NAME, daemon=True)
        self._thread.start()

    # -- on the loop ---------------------------------------------------------------------------

    def _on_tick(self, hb: Heartbeat, now: float, lag: float) -> None:
        if lag >= 0.0:
            self.lag.record(lag)
        episode = hb.episode
        if episode is not None and episode.end is None:
            episode.end = now
            episode.lag = lag if lag >= 0.0 else now - episode.due
            if lag >= 0.0:
                episode.window, episode.cpu, episode.runq = hb.window, hb.window_cpu, hb.window_runq
                episode.process_cpu = hb.window_process_cpu
        elif lag >= self.block_s:
            self._unseen.append((now - lag, now, lag, hb.window, hb.window_cpu, hb.window_runq, hb.window_process_cpu))

    # -- the app's parts, so a stack can be classified ------------------------------------------

    def _register_app(self, app: Any) -> None:
        # Every endpoint, also of included routers and mounted apps: a block under an endpoint that is
        # not known would be blamed on the innermost middleware layer of the stack.
        for template, endpoint in routes.endpoints(app):
            self._register_endpoint(template, endpoint)
        for code in routes.dispatch_codes(app):
            attribution.register_code(code, "router", "router")
        for middleware in getattr(app, "user_middleware", None) or ():
            try:
                _register_middleware(middleware)
            except Exception as exc:
                containment.report("eventloop middleware registration", exc)

    def _register_endpoint(self, template: str, endpoint: Any) -> None:
        code = code_of(endpoint)
        if code is None:
            return
        attribution.register_code(code, "endpoint", template)
        if len(self._endpoints) < 10000:
            location = location_of(code)
            if location is not None:
                self._endpoints.setdefault(template, location)
        wrapped = getattr(endpoint, "__code__", None)
        if wrapped is not None and wrapped is not code:
            attribution.register_code(wrapped, "endpoint", template)

    # -- the watchdog thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            begun = _monotonic()
            try:
                timeout = self._check()
            except Exception as exc:
                containment.report("eventloop watchdog", exc)
                timeout = 1.0
            with self._looked:
                self._looks += 1
                self._looked.notify_all()
            planned = _monotonic()
            if planned - begun > WATCHDOG_GAP_FLOOR_S:
                self._gaps.append((begun, planned))  # stopped (or kept from the GIL) while checking
            planned += timeout
            woken = self._wake.wait(timeout)
            self._wake.clear()
            if not woken:
                late = _monotonic() - planned
                if late > WATCHDOG_GAP_FLOOR_S:
                    self._gaps.append((planned, planned + late))

    def _check(self) -> float:
        now = _monotonic()
        wake = now + 1.0
        for loop, hb in list(hub.heartbeats.items()):
            closed = hb.stopped or loop.is_closed()
            if closed or not loop.is_running():
                episode, hb.paused = hb.episode, True
                if episode is not None and episode.end is None and episode.last_seen is not None:
                    # The loop stopped before it ticked again (a TestClient used without ``with`` closes
                    # its loop as soon as the request returns): the block lasted at least until the last
                    # sample that saw it.
                    episode.end = episode.last_seen
                    episode.lag = episode.last_seen - episode.due
                if episode is not None and episode.end is not None:
                    self._finish(hb, episode)  # before the episode is cleared: the pytest plugin waits for that
                hb.episode = None
                if closed:
                    hub.heartbeats.pop(loop, None)
                    hb.close()
                continue
            handle = hb.handle
            if handle is not None and handle.when() - loop.time() > CLOCK_JUMP_S:
                # The pending tick is due further away than it is ever scheduled: the loop's clock
                # went back after it was scheduled (freezegun froze time.monotonic, the loop's clock,
                # and the heartbeat's, then let go). It would never run and the loop would go
                # unwatched: due now by the watchdog's clock (a block from here on is an episode),
                # and the loop ticks as soon as it can.
                hb.handle = None
                hb.due = hb.last_tick = now
                hb.episode = None
                loop.call_soon_threadsafe(hb.restart)
            episode = hb.episode
            if episode is None:
                if now - hb.due >= self.block_s:
                    episode = _Episode(hb.ticks, hb.due, now)
                    hb.episode = episode
                    if hb.ticks != episode.ticks:  # ticked meanwhile: not blocked after all
                        hb.episode = None
                        continue
                    # Sampled before the CPU clocks are read: reading them releases the interpreter, and a
                    # call that held it (a collection, a C extension) has just let go; the loop thread must
                    # not run on past it first.
                    self._sample(hb, episode)
                    episode.cpu_at_start = _cpu_by_kind(hb.thread_id)
                    wake = min(wake, now + self.sample_s)
                else:
                    wake = min(wake, hb.due + self.block_s)
            elif episode.end is not None or hb.ticks != episode.ticks:
                # Cleared once judged: the pytest plugin waits for no episode in progress, and judging
                # reads the threads' CPU clocks, which lets the test go on meanwhile.
                try:
                    self._finish(hb, episode)
                finally:
                    hb.episode = None
                wake = min(wake, hb.due + self.block_s)
            else:
                self._sample(hb, episode)
                wake = min(wake, now + self.sample_s)
        while self._unseen:
            due, end, lag, window, cpu, runq, process_cpu = self._unseen.popleft()
            if self._verdict(due, end, lag, window, cpu, runq, process_cpu) == PAUSED:
                self._paused(lag)
        # At most a second: a clock that jumped (freezegun) must not put the watchdog to sleep for years.
        return min(max(wake - _monotonic(), 0.001), 1.0)

    def _sample(self, hb: Heartbeat, episode: _Episode) -> None:
        frame = sys._current_frames().get(hb.thread_id)
        if frame is None:
            return
        stack = attribution.capture(frame)
        busy = _loop_busy(hb, frame, stack)
        if busy is not False and episode.state is None:
            episode.state = _request_on(hb.loop, frame)
        del frame
        if hb.ticks != episode.ticks:
            return  # the loop moved on while we looked: this stack is not the block
        episode.taken += 1
        user = attribution.first_user_frame(stack)
        if busy is False or (busy is None and user is None and episode.state is None):
            return  # the loop is idle in its selector: the process was starved (or paused), not blocked
        if any((info.module, info.code.co_name) == _LIFESPAN for info in stack):
            return  # start-up or shut-down code: it delays start-up, not requests
        owner, running = attribution.first_owner(stack)
        if running is not None and running.code is _GC_CALLBACK:
            return  # a collection is starting or ending: gc_pauses measures it, not the agent's cost
        if owner == attribution.AGENT and running is not None:
            # The agent's or OpenTelemetry's code is running (on the app's behalf or not): its cost,
            # whichever of its functions the sample caught.
            key = (None, None, _AGENT_COST, None)
            episode.samples[key] = episode.samples.get(key, 0) + 1
            return
        root_cause, middleware = attribution.classify(stack)
        call: str | None = None
        location: Location | None = None
        if root_cause == "large_payload":
            call = _serialiser(stack)
        if user is not None:
            location = attribution.location(user)
            if call is None:
                call = attribution.call_in(user)
        elif stack and call is None:
            inner = stack[0]
            call = f"{inner.module}.{inner.code.co_qualname}"
        key = (location, call, root_cause, middleware)
        episode.samples[key] = episode.samples.get(key, 0) + 1
        episode.last_seen = _monotonic()
        if not episode.span_done:
            episode.span_done = True
            self._span_event(episode, key)

    def _span_event(self, episode: _Episode, key: tuple[Location | None, str | None, str, str | None]) -> None:
        state = episode.state
        span = getattr(state, "span", None) if state is not None else None
        if span is None or not span.is_recording():
            return
        location, call, root_cause, middleware = key
        attributes: dict[str, Any] = {
            "fastapi_doctor.root_cause": root_cause,
            "fastapi_doctor.threshold_ms": self.block_s * 1000.0,
        }
        if call:
            attributes["fastapi_doctor.call"] = call
        if middleware:
            attributes["fastapi_doctor.middleware"] = middleware
        if location is not None:
            attributes["code.file.path"] = location.file
            attributes["code.line.number"] = location.line
            attributes["code.function.name"] = location.function
        # Stamped when the loop was due to tick: the block had started by then.
        started_ns = time.time_ns() - int((_monotonic() - episode.due) * 1e9)
        span.add_event("fastapi_doctor.eventloop.blocked", attributes, timestamp=started_ns)

    def _verdict(
        self,
        due: float,
        end: float,
        lag: float,
        window: float,
        cpu: float | None,
        runq: float | None,
        process_cpu: float | None,
        python_share: float = 1.0,
    ) -> str:
        watch_from = due + self.block_s
        missed, longest = _overlap(self._gaps, watch_from, end)
        return judge(lag, window, cpu, runq, process_cpu, missed, longest, max(end - watch_from, self.sample_s),
                     python_share)

    def _paused(self, lag: float) -> None:
        self.paused.add(1)
        self.paused_time.add(lag)
        self.paused_total[0] += 1
        self.paused_total[1] += lag

    def _finish(self, hb: Heartbeat, episode: _Episode) -> None:
        blocked = episode.lag if episode.lag is not None else hb.last_tick - episode.due
        if blocked <= 0.0:
            return
        end = episode.end if episode.end is not None else hb.last_tick
        state = episode.state
        route = state.route if state is not None else None
        verdict = self._verdict(
            episode.due, end, blocked, episode.window, episode.cpu, episode.runq, episode.process_cpu,
            _python_share(episode.cpu_at_start, hb.thread_id),
        )
        if verdict == PAUSED:
            self._paused(blocked)  # whatever line the process stopped at is not to blame
            return
        # A pause of the collector holds the GIL: the code it interrupted is not to blame.
        gc_time = gc_pauses.overlap(episode.due - hb.interval, end)
        if gc_time >= 0.5 * blocked or not episode.serving or verdict not in SAMPLES_NEEDED:
            # Nor is start-up (before the first request), nor another thread holding the interpreter.
            self._count(route if episode.serving else None, None, blocked)
            return
        if not episode.samples:
            return
        key = max(episode.samples.items(), key=lambda kv: (kv[1], kv[0][0] is not None))[0]
        location, call, root_cause, middleware = key
        # Samples in the same function agree (a CPU loop is caught on each of its lines in turn).
        samples = sum(n for other, n in episode.samples.items() if _same_function(other, key))
        # One call held the loop: the loop thread waited in it (every sample is that call), or it
        # ran and two samples saw the same function. One sample of a busy loop is a moment, not a cause.
        # Library code with no line of the app's around it (Starlette, uvicorn): only what samples
        # agree on, and never on a starved loop (where it was preempted is not a cause).
        needed = SAMPLES_NEEDED[verdict]
        if location is None and root_cause == "blocking_io":
            needed = 2 if verdict != STARVED else episode.taken + 1
        if samples < needed or (needed > 1 and 2 * samples < sum(episode.samples.values())):
            self._count(route, None, blocked)
            return
        if root_cause == "large_payload" and state is not None and state.finished:
            if state.body_bytes < self.agent.settings.large_response_bytes:
                # A small body is not a large payload: its serialisation was slow for another reason.
                self._count(route, None, blocked)
                return
        if root_cause == _AGENT_COST:
            self.agent_stalls.add(1)
            self.agent_stall_time.add(blocked)
            self.agent_total[0] += 1
            self.agent_total[1] += blocked
            return
        self._count(route, root_cause, blocked)
        self.episodes_seen += 1
        if location is None and route is not None:
            location = self._endpoints.get(route)
        if location is None:
            return  # no line of the app to show (library code outside any route): counted, not a finding
        blocked_ms = round(blocked * 1000.0, 1)
        method = state.method if state is not None else None
        # One function blocking is one problem, whichever of its lines the samples caught most.
        stat_key = (root_cause, method, route, (location.file, location.function) if location is not None else None)
        stats = self._stats.get(stat_key)
        if stats is None:
            if len(self._stats) > 2 * self.agent.settings.max_findings:
                self._stats.clear()
            stats = self._stats[stat_key] = [0, 0.0]
        stats[0] += 1
        stats[1] = max(stats[1], blocked_ms)
        block = LoopBlock(
            root_cause=root_cause,
            call=call,
            middleware=middleware,
            location=location,
            method=method,
            route=route,
            in_request=state is not None,
            blocked_s=blocked,
            max_blocked_ms=stats[1],
            episodes=int(stats[0]),
            samples=samples,
            samples_total=episode.taken,
            threshold_s=self.block_s,
        )
        first = self._held.pop(stat_key, None)
        if block.episodes == 1:
            # The rules see a line's first block again with its second: once may not be a problem.
            if len(self._held) > 2 * self.agent.settings.max_findings:
                self._held.clear()
            self._held[stat_key] = block
        elif first is not None:
            block = dataclasses.replace(block, first=first)
        self.agent.report(block)

    def stalls(self) -> dict[str, Any]:
        """What made the loop late that is not the app's code, for the doctor page (numbers only)."""
        out: dict[str, Any] = {}
        if self.paused_total[0]:
            out["paused"] = {"episodes": self.paused_total[0], "seconds": round(self.paused_total[1], 3)}
            throttled = cgroup.cgroup_throttling()
            if throttled is not None and self._throttled is not None:
                out["paused"]["throttled_periods"] = throttled[0] - self._throttled[0]
                out["paused"]["throttled_seconds"] = round(throttled[1] - self._throttled[1], 3)
        elapsed = max(_monotonic() - self.started, 1e-9)
        if self.agent_total[1] > AGENT_STALL_BUDGET * elapsed:
            out["agent"] = {
                "episodes": self.agent_total[0],
                "seconds": round(self.agent_total[1], 3),
                "budget_share": AGENT_STALL_BUDGET,
                "share": round(self.agent_total[1] / elapsed, 4),
            }
        return out

    def _count(self, route: str | None, root_cause: str | None, blocked: float) -> None:
        key = (route, root_cause)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {}
            if route is not None:
                attrs["http.route"] = route
            if root_cause is not None:
                attrs["root_cause"] = root_cause
            if len(self._attrs) < 10000:
                self._attrs[key] = attrs
        self.blocked.add(1, attrs)
        self.blocked_time.add(blocked, attrs)


def _cpu_by_kind(loop_ident: int) -> tuple[float, float, float] | None:
    """CPU seconds so far of the process, of its threads that run Python, and of those but the loop's
    and the calling watchdog's (None without Linux's schedstat). A thread a C library started is
    not among ``threading.enumerate()``; its time is the process's less the Python threads'."""
    python: dict[int, int] = {}  # native id -> 1 for the loop's and the watchdog's, else 0
    me = threading.get_ident()
    for thread in threading.enumerate():
        if thread.native_id is not None:
            python[thread.native_id] = int(thread.ident in (loop_ident, me))
    clocks = threads_cpu(python)
    if clocks is None:
        return None
    return time.process_time(), sum(clocks.values()), sum(v for tid, v in clocks.items() if not python[tid])


def _python_share(at_start: tuple[float, float, float] | None, loop_ident: int) -> float:
    """Of the CPU time the other threads used since ``at_start``, the share of threads running Python."""
    now = _cpu_by_kind(loop_ident) if at_start is not None else None
    if now is None or at_start is None:
        return 1.0
    process, python, others = (b - a for a, b in zip(at_start, now))
    native = max(0.0, process - python)
    others = max(0.0, others)
    return others / (others + native) if others + native > 0.001 else 1.0


_SampleKey = tuple[Location | None, str | None, str, str | None]  # (location, call, root cause, middleware)


def _same_function(a: _SampleKey, b: _SampleKey) -> bool:
    """Two samples' keys point at the same function (or, without a line of the app, the same call)."""
    if a[2:] != b[2:]:
        return False
    if a[0] is None or b[0] is None:
        return a[0] is b[0] and a[1] == b[1]
    return a[0].file == b[0].file and a[0].function == b[0].function


def _serialiser(stack: tuple[attribution.FrameInfo, ...]) -> str | None:
    for info in stack:
        if (info.module, info.code.co_name) in attribution.SERIALISATION_FUNCTIONS:
            return f"{info.module}.{info.code.co_qualname}"
    return None


def _request_on(loop: Any, frame: Any) -> RequestState | None:
    """The request whose task the loop is running (None between requests or in a plain callback)."""
    states = list(active_requests.values())
    if _current_tasks is not None:
        task = _current_tasks.get(loop)
        if task is None:
            return None
        get_context = getattr(task, "get_context", None)  # Python 3.12+: tasks spawned by the request too
        if get_context is not None:
            state = get_context().get(current_request)
            if state is not None:
                return state
        for state in states:
            if state.inner_task is task or state.outer_task is task:
                return state
        return None
    # No task registry (newer Pythons): the running task's coroutine frame is on the loop thread's stack.
    frames = set()
    while frame is not None:
        frames.add(id(frame))
        frame = frame.f_back
    for state in states:
        for task in (state.inner_task, state.outer_task):
            coro = task.get_coro() if task is not None else None
            if coro is not None and id(getattr(coro, "cr_frame", None)) in frames:
                return state
    return None


def _register_middleware(middleware: Any) -> None:
    cls = getattr(middleware, "cls", None)
    kwargs = getattr(middleware, "kwargs", None) or {}
    dispatch = kwargs.get("dispatch")
    if dispatch is not None:  # @app.middleware("http") / BaseHTTPMiddleware(dispatch=...)
        code = code_of(dispatch)
        name = getattr(dispatch, "__qualname__", getattr(dispatch, "__name__", "middleware"))
    elif isinstance(cls, type):
        method = None
        for klass in cls.__mro__:  # the class's own dispatch (BaseHTTPMiddleware) or __call__ (pure ASGI)
            if "dispatch" in klass.__dict__ and klass.__name__ != "BaseHTTPMiddleware":
                method = klass.__dict__["dispatch"]
                break
            if "__call__" in klass.__dict__:
                method = klass.__dict__["__call__"]
                break
        code = getattr(method, "__code__", None)
        name = cls.__name__
    else:
        return
    if code is not None and not attribution.is_library_file(code.co_filename):
        attribution.register_code(code, "middleware", name)
