"""From a stack to the user's line of code and the root cause it points to.

Stacks are reduced to code locations at once (file, line, function): no local variables are read
or kept. Library frames (fastapi, starlette, anyio, asyncio, uvicorn, site-packages, the standard
library and the agent itself) are skipped to reach the user's code.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import sys
import sysconfig
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi_doctor.findings import Location

DEFAULT_LIBRARY_MODULES = (
    "fastapi",
    "starlette",
    "anyio",
    "asyncio",
    "uvicorn",
    "uvloop",
    "gunicorn",
    "pydantic",
    "pydantic_core",
    "sqlalchemy",
    "opentelemetry",
    "wrapt",
    "concurrent",
    "threading",
)

_AGENT_DIR = os.path.dirname(os.path.abspath(__file__))
_AGENT_DEMO_DIR = os.path.join(_AGENT_DIR, "demo")

# Functions whose frames mean "the response is being serialised": a block there is a large payload.
SERIALISATION_FUNCTIONS = frozenset(
    {
        ("fastapi.routing", "serialize_response"),
        ("fastapi_doctor.signals.responses", "serialize_response"),  # the response signal's timer around it
        ("fastapi.encoders", "jsonable_encoder"),
        ("fastapi.routing", "_prepare_response_content"),
        ("starlette.responses", "render"),
        ("fastapi.responses", "render"),
        ("json", "dumps"),
        ("json.encoder", "encode"),
        ("json.encoder", "iterencode"),
    }
)


class _LibraryIndex:
    def __init__(self) -> None:
        self._prefixes: tuple[str, ...] = ()
        self.configure(())

    def configure(self, extra_modules: Iterable[str]) -> None:
        prefixes: list[str] = []
        paths = sysconfig.get_paths()
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if paths.get(key):
                prefixes.append(os.path.realpath(paths[key]) + os.sep)
        for site_dir in sys.path:
            if site_dir.endswith(("site-packages", "dist-packages")):
                prefixes.append(os.path.realpath(site_dir) + os.sep)
        for name in (*DEFAULT_LIBRARY_MODULES, *extra_modules):
            prefixes.extend(_module_dirs(name))
        prefixes.append(_AGENT_DIR + os.sep)
        self._prefixes = tuple(dict.fromkeys(prefixes))
        self.is_library.cache_clear()

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one index per process, filenames are few
    def is_library(self, filename: str) -> bool:
        if filename.startswith("<"):
            # <frozen ...>, <string>: the interpreter's own code
            return filename.startswith("<frozen")
        path = os.path.realpath(filename)
        if path.startswith(_AGENT_DEMO_DIR + os.sep):
            return False  # the demo patient is user code
        return path.startswith(self._prefixes)


def _module_dirs(name: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [os.path.realpath(p) + os.sep for p in spec.submodule_search_locations]
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return [os.path.realpath(spec.origin)]
    return []


_index = _LibraryIndex()


def configure(extra_library_modules: Iterable[str]) -> None:
    _index.configure(extra_library_modules)


def is_library_file(filename: str) -> bool:
    return _index.is_library(filename)


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """A frame reduced to what attribution needs. ``globals`` is the module namespace (to name calls)."""

    code: types.CodeType
    lineno: int
    lasti: int
    module: str
    globals: Any

    @property
    def function(self) -> str:
        return self.code.co_qualname

    @property
    def filename(self) -> str:
        return self.code.co_filename


def capture(frame: types.FrameType | None, limit: int = 128) -> tuple[FrameInfo, ...]:
    """The stack from ``frame`` outwards, innermost first, as code locations."""
    out: list[FrameInfo] = []
    while frame is not None and len(out) < limit:
        g = frame.f_globals
        out.append(FrameInfo(frame.f_code, frame.f_lineno or 0, frame.f_lasti, g.get("__name__", ""), g))
        frame = frame.f_back
    return tuple(out)


def display_path(filename: str) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def location(info: FrameInfo) -> Location:
    return Location(display_path(info.filename), info.lineno, info.function)


def first_user_frame(stack: Iterable[FrameInfo]) -> FrameInfo | None:
    """The innermost frame of the user's code in a stack given innermost first."""
    for info in stack:
        if not _index.is_library(info.filename):
            return info
    return None


def caller_location(skip: int = 1, limit: int = 64) -> Location | None:
    """Cheap walk from the caller to the first frame of user code (no traceback is built)."""
    frame: types.FrameType | None = sys._getframe(skip + 1)
    depth = 0
    while frame is not None and depth < limit:
        code = frame.f_code
        if not _index.is_library(code.co_filename):
            return Location(display_path(code.co_filename), frame.f_lineno or 0, code.co_qualname)
        frame = frame.f_back
        depth += 1
    return None


# --- what call a frame is stuck in -------------------------------------------------------------


def call_in(info: FrameInfo) -> str | None:
    """The call the frame is executing, e.g. ``time.sleep`` or ``requests.get``; None when unknown."""
    try:
        source = _call_source(info.code, info.lasti)
        if source is None:
            return None
        return _resolve(source, info.globals)
    except Exception:
        return None


@functools.lru_cache(maxsize=2048)
def _call_source(code: types.CodeType, lasti: int) -> str | None:
    import linecache

    positions = list(code.co_positions())
    index = lasti // 2
    if not 0 <= index < len(positions):
        return None
    start_line, end_line, start_col, end_col = positions[index]
    if start_line is None or start_col is None or end_col is None:
        return None
    lines = [linecache.getline(code.co_filename, n) for n in range(start_line, (end_line or start_line) + 1)]
    if not lines or not lines[0]:
        return None
    if len(lines) == 1:
        segment = lines[0][start_col:end_col]
    else:
        segment = lines[0][start_col:] + "".join(lines[1:-1]) + lines[-1][:end_col]
    try:
        node = ast.parse(segment.strip(), mode="eval").body
    except SyntaxError:
        return None
    while isinstance(node, ast.Await):
        node = node.value
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return ast.unparse(node.func)
    parts.append(func.id)
    return ".".join(reversed(parts))


def _resolve(dotted: str, namespace: Any) -> str:
    """Name a call by what it is: ``sleep`` imported from time is ``time.sleep``."""
    head, _, rest = dotted.partition(".")
    obj = namespace.get(head) if hasattr(namespace, "get") else None
    if obj is None:
        import builtins

        obj = getattr(builtins, head, None)
        if obj is None:
            return dotted
        return dotted if not rest else f"{head}.{rest}"
    if isinstance(obj, types.ModuleType):
        return f"{obj.__name__}.{rest}" if rest else obj.__name__
    if not rest:
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if module and qualname and module != "builtins":
            return f"{module}.{qualname}"
    return dotted


# --- root cause of a blocked stack ----------------------------------------------------------------

# Code objects of the app's own parts, registered by the FastAPI hooks: (role, name).
_code_roles: dict[types.CodeType, tuple[str, str]] = {}


def register_code(code: types.CodeType, role: str, name: str) -> None:
    """Mark ``code`` as a route's ``endpoint``, a ``dependency`` or a ``middleware`` layer."""
    _code_roles.setdefault(code, (role, name))


def code_role(code: types.CodeType) -> tuple[str, str] | None:
    return _code_roles.get(code)


def iter_roles(stack: Iterable[FrameInfo]) -> Iterator[tuple[FrameInfo, str, str]]:
    for info in stack:
        role = _code_roles.get(info.code)
        if role is not None:
            yield info, role[0], role[1]


def classify(stack: tuple[FrameInfo, ...]) -> tuple[str, str | None]:
    """(root_cause, middleware name) for a stack that blocked the loop, innermost first.

    The first part of the app met walking outwards decides: serialisation means a large payload,
    a middleware layer's own code means slow middleware, anything else blocking I/O.
    """
    for info in stack:
        if (info.module, info.code.co_name) in SERIALISATION_FUNCTIONS:
            return "large_payload", None
        role = _code_roles.get(info.code)
        if role is not None:
            if role[0] == "middleware":
                return "slow_middleware", role[1]
            return "blocking_io", None
    return "blocking_io", None
