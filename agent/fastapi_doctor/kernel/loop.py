"""The loop hub: one heartbeat per event loop the app runs on, shared by the loop-side signals
(event loop watchdog, threadpool, GC pauses, tasks), and the stall clock read from it.

A probe placed in the app's middleware stack attaches each loop it first runs on (a plain function
per request, no coroutine frame). Each heartbeat ticks every ``heartbeat_ms`` on its loop and keeps
how late it ran (``stalled``, ``wait``) and the loop thread's CPU and run-queue time between ticks
(Linux schedstat), which the watchdog reads to tell a blocked loop from a paused process.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from fastapi_doctor import containment
from fastapi_doctor.context import active_requests

_get_running_loop = asyncio._get_running_loop
_monotonic = time.monotonic
_thread_time = time.thread_time
_process_time = time.process_time
_pread = os.pread


def _open_schedstat() -> int | None:
    """The calling thread's scheduler statistics (Linux): time on a CPU and time waiting for one."""
    try:
        return os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return None


def _sched(fd: int | None) -> tuple[float, float | None]:
    """(seconds on a CPU, seconds ready but waiting for a CPU) of the thread ``fd`` was opened in;
    without schedstat, the calling thread's CPU clock and None."""
    if fd is not None:
        try:
            fields = _pread(fd, 64, 0).split()
            return int(fields[0]) / 1e9, int(fields[1]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    return _thread_time(), None


TickCallback = Callable[["Heartbeat", float, float], None]


class Heartbeat:
    """One event loop's heartbeat. Written by the loop thread, read by the watchdog (no locks: each
    field is one reference swap under the GIL)."""

    __slots__ = (
        "loop",
        "thread_id",
        "interval",
        "due",
        "last_tick",
        "ticks",
        "stopped",
        "paused",
        "episode",
        "limiter",
        "pool",
        "python_loop",
        "driver",
        "stalled",
        "wait",
        "sched_fd",
        "cpu",
        "runq",
        "process_cpu",
        "window",
        "window_cpu",
        "window_runq",
        "window_process_cpu",
        "handle",
    )

    def __init__(self, loop: Any, thread_id: int, interval: float) -> None:
        self.loop = loop
        self.thread_id = thread_id
        self.interval = interval
        now = _monotonic()
        self.due = now + interval
        self.last_tick = now
        self.ticks = 0
        self.stopped = False
        self.paused = False  # the loop was seen stopped: the next tick's lateness is not lag
        self.episode: Any = None  # set by the loop watchdog while the loop is blocked (its _Episode)
        self.limiter: Any = None  # anyio's default thread limiter of this loop (threadpool signal)
        self.pool: Any = None  # threadpool signal's per-loop state
        # asyncio's own loops run every callback through Handle._run (a Python frame): without one on
        # the stack the loop is idle. Other loops (uvloop) run callbacks from C: there the loop is idle
        # when the thread's innermost frame is the one that started the loop (``driver``).
        self.python_loop = isinstance(loop, asyncio.BaseEventLoop)
        self.driver: Any = None
        # Seconds this loop has run late so far (see stall_clock).
        self.stalled = 0.0
        # Recent lateness of the tick (moving average): how long a callback made ready now waits for
        # the loop (see queue_wait).
        self.wait = 0.0
        # The loop thread's time on a CPU and waiting for one, and the process's CPU clock, at the
        # last tick and over the window between the last two ticks: did the loop (the process) run
        # while it was late, or wait for a CPU? (created on the loop thread, by hub.attach)
        self.sched_fd = _open_schedstat()
        self.cpu, self.runq = _sched(self.sched_fd)
        self.process_cpu = _process_time()
        self.window = 0.0
        self.window_cpu = 0.0
        self.window_runq: float | None = None
        self.window_process_cpu = 0.0
        self.handle: Any = None  # the pending tick

    def start(self) -> None:
        self.handle = self.loop.call_later(self.interval, self.tick)

    def restart(self) -> None:
        """On the loop's thread: the pending tick would never run (its clock jumped); tick now and go on."""
        if self.stopped:
            return
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cancel()
        self.tick()

    def close(self) -> None:
        """Stop ticking and let go of the schedstat file."""
        self.stopped = True
        fd, self.sched_fd = self.sched_fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def busy_clock(self) -> tuple[float, float]:
        """(seconds the loop thread has been on a CPU or ready and waiting for one, monotonic time), read
        at the last tick: between two readings, the loop's busy share of the wall time is the ratio of
        their differences (without schedstat the wait for a CPU is unknown and left out: a lower bound)."""
        runq = self.runq
        return self.cpu + (runq if runq is not None else 0.0), self.last_tick

    def busy_clock_now(self) -> tuple[float, float]:
        """:meth:`busy_clock` read now; on the loop's thread (without schedstat the CPU clock read is the
        calling thread's)."""
        cpu, runq = _sched(self.sched_fd)
        return cpu + (runq if runq is not None else 0.0), _monotonic()

    def tick(self) -> None:
        if self.stopped:
            return
        try:
            now = _monotonic()
            cpu, runq = _sched(self.sched_fd)
            process_cpu = _process_time()
            self.window = now - self.last_tick
            self.window_cpu = cpu - self.cpu
            self.window_runq = runq - self.runq if runq is not None and self.runq is not None else None
            self.window_process_cpu = process_cpu - self.process_cpu
            self.cpu, self.runq, self.process_cpu = cpu, runq, process_cpu
            lag = now - self.due
            if self.paused or lag > CLOCK_JUMP_S:
                self.paused = False
                lag = -1.0  # unknown: the loop was not running, or its clock jumped
            elif lag < 0.0:
                lag = 0.0
            self.stalled += stall_of(lag, self.interval)
            if lag >= 0.0:
                self.wait += (lag - self.wait) * 0.25
            self.last_tick = now
            self.due = now + self.interval
            self.ticks += 1
            for callback in hub.tick_callbacks:
                try:
                    callback(self, now, lag)
                except Exception as exc:
                    containment.report(getattr(callback, "__qualname__", "heartbeat callback"), exc)
            self.handle = self.loop.call_later(self.interval, self.tick)
        except Exception as exc:  # e.g. the loop is closing: the heartbeat stops, the app goes on
            self.stopped = True
            containment.report("eventloop heartbeat", exc)


class _LoopProbe:
    """Sits inside the app's middleware stack; starts the heartbeat of each loop it first runs on.

    ``__call__`` is a plain function returning the inner app's coroutine: no extra frame per request.
    """

    __slots__ = ("app", "_loop", "__weakref__")

    def __init__(self, app: Any) -> None:
        self.app = app
        self._loop: Any = None

    def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        loop = _get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            hub.attach(loop)
        return self.app(scope, receive, send)


class LoopHub:
    """Heartbeats of every loop the app runs on, started by probes and used by several signals."""

    def __init__(self) -> None:
        self.heartbeats: dict[Any, Heartbeat] = {}
        self.tick_callbacks: list[TickCallback] = []
        self.attach_callbacks: list[Callable[[Heartbeat], None]] = []
        self.interval = 0.05
        self.active = False
        self._users: list[Any] = []
        self._probes: weakref.WeakSet[_LoopProbe] = weakref.WeakSet()
        # attach_running_loop() was called: blocks count from then on, before any request too.
        self.watched_explicitly = False
        self._lock = threading.Lock()

    def acquire(self, user: Any, agent: Any) -> None:
        """A signal uses the heartbeat until the agent's installs are undone (``agent.instrumentation``);
        the first one puts the probe in the stacks built from then on."""
        with self._lock:
            self._users.append(user)
            first = not self.active
            if first:
                self.active = True
                self.interval = agent.settings.heartbeat_ms / 1000.0
        if first:
            agent.instrumentation.wrap_stack(self.wrap_stack)
        agent.instrumentation.record(lambda: self.release(user), "loop hub")

    def release(self, user: Any) -> None:
        """A signal stops using the heartbeat; the last one stops every heartbeat."""
        with self._lock:
            if user in self._users:
                self._users.remove(user)
            if self._users or not self.active:
                return
            self.active = False
            self.watched_explicitly = False
            for hb in self.heartbeats.values():
                hb.close()  # its next tick does not reschedule
            self.heartbeats.clear()
            for probe in list(self._probes):
                probe._loop = None  # a later instrument() starts again on the next call

    def after_fork(self) -> None:
        """In a forked child: the parent's loops do not run here; the child's are attached on first use."""
        self._lock = threading.Lock()
        for hb in self.heartbeats.values():
            hb.close()
        self.heartbeats.clear()
        for probe in list(self._probes):
            probe._loop = None

    def wrap_stack(self, app: Any, stack: Any) -> Any:
        probe = _LoopProbe(stack)
        self._probes.add(probe)
        if _get_running_loop() is not None:  # stacks are built on the loop, at the app's first call
            probe._loop = _get_running_loop()
            self.attach(probe._loop)
        return probe

    def attach(self, loop: Any) -> None:
        """Start the heartbeat of ``loop`` (the running loop of the calling thread) once."""
        if loop is None or not self.active or loop in self.heartbeats:
            return
        try:
            hb = Heartbeat(loop, threading.get_ident(), self.interval)
            hb.driver = _driver_frame(loop)
            for callback in self.attach_callbacks:
                try:
                    callback(hb)
                except Exception as exc:
                    containment.report(getattr(callback, "__qualname__", "heartbeat attach"), exc)
            self.heartbeats[loop] = hb
            hb.start()
            for user in self._users:
                notify = getattr(user, "loop_attached", None)
                if notify is not None:
                    notify(hb)
        except Exception as exc:
            containment.report("eventloop attach", exc)


hub = LoopHub()

# A tick due (or run) further from the loop's clock than this did not wait for the loop: the clock
# jumped (freezegun froze time.monotonic, the loop's clock and the heartbeat's, then let go).
CLOCK_JUMP_S = 10.0

# Lateness of a tick below this is not a stall: uvloop's timers have a resolution of 1 ms, and on a
# busy machine a tick runs a few ms late without anything blocking the loop. Counted as a stall, that
# jitter zeroed the time of dependencies awaiting across it (a 30 ms teardown read as 0).
STALL_FLOOR_S = 0.005


def stall_of(lag: float, interval: float) -> float:
    """Seconds of stall a tick ``lag`` seconds late stands for.

    The heartbeat sees a stall only from its due time: whatever held the loop may have begun up to
    one ``interval`` before. That interval is added (an upper bound) when the lateness is at least an
    interval long, or when other requests were in flight: then the loop was most likely running their
    code, and a dependency awaiting meanwhile is not charged it (another request's blocking call, or
    its serialisation in small steps). A shorter lateness with one request in flight is taken as it
    is: the process was descheduled, or another thread held the GIL, for about that long. Adding a
    whole interval there zeroed the time of a lone dependency awaiting 30 ms (a CI flake).
    """
    if lag <= STALL_FLOOR_S:
        return 0.0
    return lag + interval if lag >= interval or len(active_requests) > 1 else lag


def running_heartbeat() -> Heartbeat | None:
    """The heartbeat of the calling thread's running loop (None: no loop, or not attached)."""
    loop = _get_running_loop()
    return hub.heartbeats.get(loop) if loop is not None else None


def stall_clock() -> float:
    """Seconds the running loop has been stalled so far, a clock that only moves while it is.

    The difference over an interval (``stalled_between``) is the time the loop could not run
    anything in it: an async dependency awaiting while another coroutine blocks the loop subtracts
    it from its own time, so one blocking call is not also blamed on every dependency that was
    waiting. Continuous: until the late tick runs, the lateness so far is counted from its due
    time. 0.0 without a heartbeat.
    """
    loop = _get_running_loop()
    hb = hub.heartbeats.get(loop) if loop is not None else None
    if hb is None:
        return 0.0
    pending = _monotonic() - hb.due
    # Called at every async dependency's start and end: the usual case (the tick not yet due) is
    # answered without a further call.
    return hb.stalled if pending <= STALL_FLOOR_S else hb.stalled + stall_of(pending, hb.interval)


def queue_wait() -> float:
    """Seconds a task made ready now waits for the running loop, from the heartbeat's recent
    lateness: under load every task switch queues behind the other ready tasks. 0.0 without a
    heartbeat."""
    loop = _get_running_loop()
    hb = hub.heartbeats.get(loop) if loop is not None else None
    return 0.0 if hb is None else hb.wait


def stalled_between(start_clock: float) -> float:
    """Seconds the loop was stalled since ``stall_clock()`` read ``start_clock``."""
    return stall_clock() - start_clock


def _driver_frame(loop: Any) -> Any:
    """The frame that runs ``loop`` (called from inside one of its tasks), below the task's coroutines."""
    task = asyncio.current_task(loop)
    frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    return frame.f_back if frame is not None else None
