"""The CPU throttling of the process's cgroup (a container's CPU limit): read by the process signal's
instruments and by the loop watchdog (a paused process is not a blocked loop)."""

from __future__ import annotations

import os

# cpu.stat of the process's cgroup: v2 (the unified hierarchy), then v1's cpu controller; the paths
# from /proc/self/cgroup first, then the mount's root (a container sees its own cgroup there).
_CGROUP_ROOTS = {
    "": ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"),
    "cpu": ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"),
}


def cgroup_cpu_stat_paths(proc_cgroup: str = "/proc/self/cgroup") -> list[str]:
    """Where the process's cgroup keeps its CPU throttling counters, most specific first."""
    paths: list[str] = []
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        kind = "" if controllers == "" else "cpu" if "cpu" in controllers.split(",") else None
        if kind is None:
            continue
        for root in _CGROUP_ROOTS[kind]:
            paths.append(os.path.join(root, path.lstrip("/"), "cpu.stat"))
    for roots in _CGROUP_ROOTS.values():
        paths.extend(os.path.join(root, "cpu.stat") for root in roots)
    return list(dict.fromkeys(os.path.normpath(p) for p in paths))


_cpu_stat: list[str | None] = []  # the file found, once per process ([None]: there is none)


def cgroup_throttling() -> tuple[int, float] | None:
    """(periods throttled, seconds throttled) of the process's cgroup so far; None without one.

    The kernel counts a CFS period in which the cgroup used up its CPU quota and was stopped until
    the next one (``nr_throttled``) and the time it stayed stopped (``throttled_usec`` on cgroup v2,
    ``throttled_time`` in ns on v1).
    """
    if not _cpu_stat:
        found = None
        for path in cgroup_cpu_stat_paths():
            if read_cpu_stat(path) is not None:
                found = path
                break
        _cpu_stat.append(found)
    path = _cpu_stat[0]
    return None if path is None else read_cpu_stat(path)


def after_fork() -> None:
    """In a forked worker: look for the file again (the worker may sit in another cgroup)."""
    _cpu_stat.clear()


def read_cpu_stat(path: str) -> tuple[int, float] | None:
    try:
        with open(path) as f:
            fields = dict(line.split(None, 1) for line in f.read().splitlines() if " " in line)
    except (OSError, ValueError):
        return None
    try:
        periods = int(fields["nr_throttled"])
        if "throttled_usec" in fields:
            return periods, int(fields["throttled_usec"]) / 1e6
        return periods, int(fields["throttled_time"]) / 1e9
    except (KeyError, ValueError):
        return None
