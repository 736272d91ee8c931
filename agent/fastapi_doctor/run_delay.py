"""Time a thread spent waiting for a CPU: runnable, but not running (another process or thread had
the core). Linux keeps it per thread in ``/proc/thread-self/schedstat`` (its second field, in
nanoseconds); elsewhere it reads 0.0 and callers correct nothing.

A duration measured with a wall clock under CPU contention holds this wait; subtracting the
difference of two readings taken in the same thread leaves the time the thread ran or waited on
I/O. Each reading is one ``pread`` of an open file (a few microseconds): read it where a decision
needs it, not on every request. The watchdogs read every thread's (``/proc/self/task/*/schedstat``) at
the edges of what they judge: the process's demand for CPU, and which threads used it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from fastapi_doctor.kernel import forks

_PATH = "/proc/thread-self/schedstat"
_TASKS = "/proc/self/task"
_files: dict[int, int] = {}  # thread id -> open descriptor of that thread's schedstat
_available = os.path.exists(_PATH)


def run_delay() -> float:
    """Seconds the calling thread has waited on a run queue since it started; 0.0 if unknown."""
    if not _available:
        return 0.0
    ident = threading.get_ident()
    fd = _files.get(ident)
    try:
        if fd is None:
            if len(_files) >= 64:  # threads come and go: keep a handful of descriptors
                _forget()
            fd = _files[ident] = os.open(_PATH, os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(fd, 96, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _schedstat(tid: int | str) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds waiting for one) of thread ``tid`` of this process; None if gone."""
    try:
        fd = os.open(f"{_TASKS}/{tid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # the thread ended meanwhile
    try:
        fields = os.read(fd, 96).split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def process_cpu_demand() -> tuple[float, float] | None:
    """Seconds every live thread of the process has spent on a CPU and waiting for one (runnable but
    not running), summed; None where schedstat is missing. One file per thread: for a watchdog's
    round, never a request."""
    if not _available:
        return None
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    cpu = waited = 0.0
    for tid in tids:
        clocks = _schedstat(tid)
        if clocks is not None:
            cpu += clocks[0]
            waited += clocks[1]
    return cpu, waited


def threads_cpu(tids: Iterable[int]) -> dict[int, float] | None:
    """Seconds on a CPU of each of these threads (native ids) still alive; None where schedstat is
    missing. One file per thread: for a watchdog, never a request."""
    if not _available:
        return None
    out = {}
    for tid in tids:
        clocks = _schedstat(tid)
        if clocks is not None:
            out[tid] = clocks[0]
    return out


def _forget() -> None:
    # A descriptor opened in the parent names the parent's thread: the child opens its own.
    for fd in _files.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _files.clear()


forks.on_fork(after_in_child=_forget)
