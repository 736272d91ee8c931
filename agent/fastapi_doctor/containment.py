"""The agent's boundary: nothing raised inside the agent reaches the app.

Every failure is logged once per kind (with its traceback) and counted in
``fastapi_doctor.internal_errors``; the app goes on with the same status, headers and body.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("fastapi_doctor")

_lock = threading.Lock()
_seen: set[str] = set()
counts: dict[str, int] = {}
_counter: Any = None  # an OpenTelemetry Counter once the agent has started


def set_counter(counter: Any) -> None:
    global _counter
    _counter = counter


def report(kind: str, exc: BaseException) -> None:
    """Record an exception caught at the agent's boundary. Never raises."""
    try:
        with _lock:
            counts[kind] = counts.get(kind, 0) + 1
            first = kind not in _seen
            _seen.add(kind)
        if first:
            _log.error(
                "fastapi-doctor: internal error in %s (logged once; the app is unaffected)", kind, exc_info=exc
            )
        if _counter is not None:
            _counter.add(1, {"fastapi_doctor.component": kind})
    except Exception:  # pragma: no cover - the last line of defence
        pass


def contained(kind: str, default: Any = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function of the agent so that it never raises into its caller."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                report(kind, exc)
                return default

        wrapper.__name__ = getattr(fn, "__name__", "contained")
        wrapper.__qualname__ = getattr(fn, "__qualname__", "contained")
        wrapper.__doc__ = fn.__doc__
        return wrapper

    return decorate


def reset() -> None:
    with _lock:
        _seen.clear()
        counts.clear()
