"""The process: CPU utilisation, resident memory, open file descriptors and threads, through psutil;
and the CPU throttling of its cgroup (a container's CPU limit).

Names follow OpenTelemetry's process semantic conventions (as ``opentelemetry-instrumentation-system-
metrics`` does); the cgroup's throttling, which has none, is ``fastapi_doctor.cgroup.cpu.*``. Every
value is read by an observable instrument on the collection cycle (a scrape or an OTLP export), never
per request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from fastapi_doctor.kernel import cgroup

_current: ProcessSignal | None = None


def _observe(read: Callable[[ProcessSignal], float | None]) -> Callable[[Any], Iterable[Any]]:
    def callback(_options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        signal = _current
        if signal is None:
            return []
        try:
            value = read(signal)
        except Exception:  # the process table can refuse (permissions, a platform without the call)
            return []
        return [] if value is None else [Observation(value)]

    return callback


def _cpu(signal: ProcessSignal) -> float:
    # Share of the CPUs available to the process since the previous collection, 0..1.
    return signal.process.cpu_percent(None) / 100.0 / signal.cpus


def _memory(signal: ProcessSignal) -> float:
    return float(signal.process.memory_info().rss)


def _fds(signal: ProcessSignal) -> float | None:
    num_fds = getattr(signal.process, "num_fds", None)
    return None if num_fds is None else float(num_fds())


def _threads(signal: ProcessSignal) -> float:
    return float(signal.process.num_threads())


def _throttled_periods(_signal: ProcessSignal) -> float | None:
    throttled = cgroup.cgroup_throttling()
    return None if throttled is None else float(throttled[0])


def _throttled_time(_signal: ProcessSignal) -> float | None:
    throttled = cgroup.cgroup_throttling()
    return None if throttled is None else throttled[1]


# Module-level callbacks: a second instrument() in the same process gets the same instruments back.
_CALLBACKS = {
    "cpu": _observe(_cpu),
    "memory": _observe(_memory),
    "fds": _observe(_fds),
    "threads": _observe(_threads),
    "throttled": _observe(_throttled_periods),
    "throttled_time": _observe(_throttled_time),
}


# (meter method, name, callback, unit, description) of every instrument, read on collection.
_INSTRUMENTS = (
    ("create_observable_gauge", "process.cpu.utilization", _CALLBACKS["cpu"], "1",
     "CPU time of the process since the last collection, divided by the elapsed time and CPUs."),
    # UpDownCounters, as the semantic conventions type them (Prometheus shows them as gauges).
    ("create_observable_up_down_counter", "process.memory.usage", _CALLBACKS["memory"], "By",
     "Resident memory of the process (RSS)."),
    ("create_observable_up_down_counter", "process.unix.file_descriptor.count", _CALLBACKS["fds"], "{file_descriptor}",
     "File descriptors the process has open."),
    ("create_observable_up_down_counter", "process.thread.count", _CALLBACKS["threads"], "{thread}",
     "Threads of the process."),
    ("create_observable_counter", "fastapi_doctor.cgroup.cpu.throttled", _CALLBACKS["throttled"], "{period}",
     "CFS periods in which the process's cgroup used up its CPU quota and was stopped (cpu.stat nr_throttled)."),
    ("create_observable_counter", "fastapi_doctor.cgroup.cpu.throttled_time", _CALLBACKS["throttled_time"], "s",
     "Time the process's cgroup was stopped by its CPU quota (cpu.stat throttled_usec / throttled_time)."),
)


class ProcessSignal:
    name = "process"

    def __init__(self) -> None:
        self.process: Any = None
        self.cpus = 1

    def instrument(self, agent: Any) -> None:
        global _current
        import psutil

        self.process = psutil.Process()
        try:
            self.cpus = len(self.process.cpu_affinity()) or 1
        except (AttributeError, psutil.Error, OSError):
            self.cpus = os.cpu_count() or 1
        self.process.cpu_percent(None)  # the first call only sets the baseline
        meter = agent.meter
        for create, name, callback, unit, description in _INSTRUMENTS:
            getattr(meter, create)(name, callbacks=[callback], unit=unit, description=description)
        _current = self
        agent.instrumentation.record(self._forget, "process")

    def after_fork(self) -> None:
        """In a forked worker: measure this process, not the parent (psutil.Process caches the pid)."""
        import psutil

        self.process = psutil.Process()
        self.process.cpu_percent(None)
        cgroup.after_fork()  # the worker may sit in another cgroup

    def _forget(self) -> None:
        global _current
        if _current is self:
            _current = None
