"""Where anyio's worker threads are: the app's line (and the call in it) each one is in, whether it
works in the database or waits for a pool connection. Read by the threadpool signal and the database
pool's saturation check, on their watchdog rounds (never on the app's path)."""

from __future__ import annotations

import collections
import sys
import threading
from typing import Any

from fastapi_doctor import attribution
from fastapi_doctor.context import pool_waiters
from fastapi_doctor.kernel.location import Location

Lines = collections.Counter[tuple[Location, str | None]]  # (the app's line, the call in it) -> threads seen


def _in_database(stack: tuple[attribution.FrameInfo, ...], user: attribution.FrameInfo) -> bool:
    """Below the user's frame, the thread is inside SQLAlchemy (a statement, a checkout)."""
    for info in stack:
        if info is user:
            return False
        if "sqlalchemy" in info.filename:
            return True
    return False


def worker_threads(loop: Any = None) -> set[int]:
    """Idents of anyio's worker threads (of ``loop`` when given)."""
    return {
        t.ident
        for t in threading.enumerate()
        if t.name == "AnyIO worker thread" and (loop is None or getattr(t, "loop", loop) is loop) and t.ident is not None
    }


def worker_lines(idents: set[int]) -> tuple[Lines, Lines, int]:
    """Where worker threads are: the app's lines (with the call) of the threads outside the database, of
    the threads working in the database, and how many threads wait for a pool connection."""
    frames = sys._current_frames()
    elsewhere: Lines = collections.Counter()
    database: Lines = collections.Counter()
    waiting = 0
    try:
        for ident in idents:
            if pool_waiters.get(ident):
                waiting += 1
                continue
            frame = frames.get(ident)
            if frame is None:
                continue
            stack = attribution.capture(frame)
            user = next((i for i in stack if not i.filename.startswith("<") and not attribution.is_library_file(i.filename)), None)
            if user is None:
                continue
            lines = database if _in_database(stack, user) else elsewhere
            lines[(attribution.location(user), attribution.call_in(user))] += 1
    finally:
        del frames
    return elsewhere, database, waiting


def blocked_elsewhere(elsewhere: Lines, database: Lines) -> tuple[Location, str | None, int] | None:
    """The app's line (and call) where most of the worker threads not waiting for a connection are,
    when that is outside the database; None when they work in the database or are spread out."""
    if not elsewhere:
        return None
    (where, call), n = elsewhere.most_common(1)[0]
    others = sum(elsewhere.values()) + sum(database.values())
    return (where, call, n) if n >= 2 and 2 * n > others else None
