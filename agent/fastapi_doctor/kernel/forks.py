"""The process's fork hooks, registered with ``os.register_at_fork`` once; each part of the agent adds
its steps here (a registered fork hook cannot be taken back, so there is one, for the process).

Steps run in the order they were added (the ``before`` ones in reverse, as the interpreter does), each
contained: a failing step leaves the others to run, and nothing raises into the forking code.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from fastapi_doctor import containment

Step = Callable[[], None]

_before: list[Step] = []
_after_in_parent: list[Step] = []
_after_in_child: list[Step] = []
_registered = False


def on_fork(*, before: Step | None = None, after_in_parent: Step | None = None,
            after_in_child: Step | None = None) -> None:
    """Run these around every fork of the process from now on (as ``os.register_at_fork``)."""
    global _registered
    if before is not None:
        _before.append(before)
    if after_in_parent is not None:
        _after_in_parent.append(after_in_parent)
    if after_in_child is not None:
        _after_in_child.append(after_in_child)
    if not _registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_run_before, after_in_parent=_run_after_in_parent,
                            after_in_child=_run_after_in_child)
        _registered = True


def _run(steps: list[Step]) -> None:
    for step in steps:
        try:
            step()
        except Exception as exc:
            containment.report(f"fork {getattr(step, '__qualname__', 'step')}", exc)


def _run_before() -> None:
    _run(_before[::-1])


def _run_after_in_parent() -> None:
    _run(list(_after_in_parent))


def _run_after_in_child() -> None:
    containment._lock = threading.Lock()  # a thread of the parent may have held it at the fork
    _run(list(_after_in_child))
