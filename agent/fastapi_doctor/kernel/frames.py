"""From code to the user's line: where a callable is defined, the innermost line of the app's code
calling into a library, and the app's loop that calls it again and again (no traceback is built)."""

from __future__ import annotations

import dis
import functools
import inspect
import sys
import types
from typing import Any

from fastapi_doctor import attribution
from fastapi_doctor.kernel.location import Location


def _target(obj: Any) -> Any:
    while isinstance(obj, functools.partial):
        obj = obj.func
    try:
        return inspect.unwrap(obj)
    except ValueError:  # a __wrapped__ cycle
        return obj


def code_of(obj: Any) -> types.CodeType | None:
    """The code object that runs when ``obj`` is called (function, method, class, callable instance)."""
    target = _target(obj)
    if isinstance(target, types.FunctionType):
        return target.__code__
    if isinstance(target, types.MethodType):
        return code_of(target.__func__)
    if isinstance(target, type):
        for klass in target.__mro__:
            init = klass.__dict__.get("__init__")
            if isinstance(init, types.FunctionType):
                return init.__code__
        return None
    call = getattr(type(target), "__call__", None)
    if isinstance(call, types.FunctionType):
        return call.__code__
    return None


def name_of(obj: Any) -> str:
    """Qualified name of a function or class; the class's for a callable instance."""
    target = _target(obj)
    qualname = getattr(target, "__qualname__", None)
    if isinstance(qualname, str) and not isinstance(target, functools.partial):
        return qualname
    return type(target).__qualname__


def location_of(code: types.CodeType | None) -> Location | None:
    """Where ``code`` is defined: its ``def`` line (after any decorators)."""
    if code is None:
        return None
    import linecache

    line = code.co_firstlineno
    if linecache.getline(code.co_filename, line).lstrip().startswith("@"):
        # co_firstlineno is the first decorator's line: find the def below the decorators.
        for offset in range(1, 32):
            text = linecache.getline(code.co_filename, line + offset).lstrip()
            if not text:
                break
            if text.startswith(("def ", "async def ", "class ")):
                line += offset
                break
    return Location(attribution.display_path(code.co_filename), line, code.co_qualname)


def _greenlet_parent() -> types.FrameType | None:
    """An async engine runs the pool and the statements inside a greenlet whose frames end at
    SQLAlchemy's ``greenlet_spawn``; the awaiting coroutines (the user's code) are in the parent greenlet."""
    greenlet = sys.modules.get("greenlet")
    parent = greenlet.getcurrent().parent if greenlet is not None else None
    return parent.gr_frame if parent is not None else None


def user_location(skip: int = 1) -> Location | None:
    """The innermost line of user code calling into SQLAlchemy (no traceback is built), through an
    async engine's greenlet too."""
    location = attribution.frame_location(sys._getframe(skip + 1))
    if location is None:
        location = attribution.frame_location(_greenlet_parent())
    return location


@functools.lru_cache(maxsize=4096)
def _in_loop(code: types.CodeType, offset: int) -> bool:
    """Whether the instruction at ``offset`` is in a loop body: a backward jump after it lands at or before
    it. ``JUMP_BACKWARD_NO_INTERRUPT`` is each ``await``'s own little loop, not the code's."""
    return any(
        ins.opname == "JUMP_BACKWARD" and ins.offset > offset and isinstance(ins.argval, int) and ins.argval <= offset
        for ins in dis.get_instructions(code)
    )


def _user_frames(frame: types.FrameType | None, limit: int = 64) -> list[types.FrameType]:
    found = []
    while frame is not None and limit > 0:
        if attribution.is_user_file(frame.f_code.co_filename):
            found.append(frame)
        frame = frame.f_back
        limit -= 1
    return found


def loop_location(skip: int = 1) -> Location | None:
    """The user's line that runs a statement again and again: the innermost user frame inside a loop (a
    repository function called once per row is not the loop, its caller's ``for`` is), else the innermost
    user line (:func:`user_location`), through an async engine's greenlet too. Called once per
    fingerprint and request, at the threshold (signals.database.db_queries)."""
    frames = _user_frames(sys._getframe(skip + 1))
    if not frames:
        frames = _user_frames(_greenlet_parent())
    for frame in frames:
        if _in_loop(frame.f_code, frame.f_lasti):
            code = frame.f_code
            return Location(attribution.display_path(code.co_filename), frame.f_lineno or 0, code.co_qualname)
    return user_location(skip + 1)
