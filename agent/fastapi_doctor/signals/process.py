"""The process: CPU utilisation, resident memory, open file descriptors and threads, through psutil.

Names follow OpenTelemetry's process semantic conventions (as ``opentelemetry-instrumentation-system-
metrics`` does). Every value is read by an observable gauge on the collection cycle (a scrape or an OTLP
export), never per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

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


# Module-level callbacks: a second instrument() in the same process gets the same instruments back.
_CALLBACKS = {"cpu": _observe(_cpu), "memory": _observe(_memory), "fds": _observe(_fds), "threads": _observe(_threads)}


class ProcessSignal:
    name = "process"

    def __init__(self) -> None:
        self.process: Any = None
        self.cpus = 1

    def instrument(self, agent: Any) -> None:
        global _current
        import os

        import psutil

        self.process = psutil.Process()
        try:
            self.cpus = len(self.process.cpu_affinity()) or 1
        except (AttributeError, psutil.Error, OSError):
            self.cpus = os.cpu_count() or 1
        self.process.cpu_percent(None)  # the first call only sets the baseline
        meter = agent.meter
        meter.create_observable_gauge(
            "process.cpu.utilization",
            callbacks=[_CALLBACKS["cpu"]],
            unit="1",
            description="CPU time of the process since the last collection, divided by the elapsed time and CPUs.",
        )
        meter.create_observable_gauge(
            "process.memory.usage",
            callbacks=[_CALLBACKS["memory"]],
            unit="By",
            description="Resident memory of the process (RSS).",
        )
        meter.create_observable_gauge(
            "process.open_file_descriptor.count",
            callbacks=[_CALLBACKS["fds"]],
            unit="{file_descriptor}",
            description="File descriptors the process has open.",
        )
        meter.create_observable_gauge(
            "process.thread.count",
            callbacks=[_CALLBACKS["threads"]],
            unit="{thread}",
            description="Threads of the process.",
        )
        _current = self

    def after_fork(self) -> None:
        """In a forked worker: measure this process, not the parent (psutil.Process caches the pid)."""
        import psutil

        self.process = psutil.Process()
        self.process.cpu_percent(None)

    def uninstrument(self) -> None:
        global _current
        if _current is self:
            _current = None
