"""From a stack to the user's line of code and the root cause it points to.

Stacks are reduced to code locations at once (file, line, function): no local variables are read
or kept. Frames that are not the user's code are skipped to reach it: libraries (fastapi, starlette,
anyio, asyncio, uvicorn, site-packages, the standard library), the agent itself, code generated at run
time (any ``<...>`` file name: ``<string>`` of dataclasses' ``__init__``, SQLAlchemy's ``<sqlalchemy
generated ...>`` wrappers, ``<frozen ...>``) and console-script entry points (``bin/uvicorn``). One walker,
:func:`user_frame`, serves every signal; :func:`first_user_frame` is the same test over a captured stack.
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

from fastapi_doctor.kernel.location import Location

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
# Code whose time is the agent's own cost, never the app's blame: the agent and the OpenTelemetry
# SDK, API, exporters and instrumentations it runs.
_AGENT_MODULES = ("opentelemetry",)

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


# Who a file belongs to.
USER, LIBRARY, STDLIB, AGENT = "user", "library", "stdlib", "agent"


class _LibraryIndex:
    def __init__(self) -> None:
        self._prefixes: tuple[str, ...] = ()
        self._site: tuple[str, ...] = ()
        self._stdlib: tuple[str, ...] = ()
        self._agent: tuple[str, ...] = ()
        self._scripts: tuple[str, ...] = ()
        self._apps: tuple[str, ...] = ()  # kept across configure()
        self.configure(())

    def configure(self, extra_modules: Iterable[str]) -> None:
        prefixes: list[str] = []
        paths = sysconfig.get_paths()
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if paths.get(key):
                prefixes.append(os.path.realpath(paths[key]) + os.sep)
        site: list[str] = [os.path.realpath(paths[key]) + os.sep for key in ("purelib", "platlib") if paths.get(key)]
        for site_dir in sys.path:
            if site_dir.endswith(("site-packages", "dist-packages")):
                site.append(os.path.realpath(site_dir) + os.sep)
        prefixes.extend(site)
        for name in (*DEFAULT_LIBRARY_MODULES, *extra_modules):
            prefixes.extend(_module_dirs(name))
        prefixes.append(_AGENT_DIR + os.sep)
        self._prefixes = tuple(dict.fromkeys(prefixes))
        self._site = tuple(dict.fromkeys(site))
        # The standard library: where ``os`` lives (a venv's platstdlib holds its site-packages too).
        self._stdlib = (os.path.dirname(os.path.realpath(os.__file__)) + os.sep,)
        self._agent = tuple(
            dict.fromkeys([_AGENT_DIR + os.sep, *(d for name in _AGENT_MODULES for d in _module_dirs(name))])
        )
        # Console-script entry points (bin/uvicorn, bin/gunicorn): generated launchers, not the app.
        scripts = [paths.get("scripts"), os.path.join(sys.prefix, "bin"), os.path.join(sys.base_prefix, "bin")]
        self._scripts = tuple(dict.fromkeys(os.path.realpath(d) + os.sep for d in scripts if d))
        self.owner.cache_clear()

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one index per process, filenames are few
    def owner(self, filename: str) -> str:
        """USER, LIBRARY, STDLIB or AGENT for a code object's file name."""
        if filename.startswith("<"):
            # <frozen ...>, <string> (dataclasses' generated __init__), <sqlalchemy generated ...>:
            # code made at run time by the interpreter or a library, never the line the user wrote.
            return STDLIB if filename.startswith("<frozen") else LIBRARY
        path = os.path.realpath(filename)
        if self._apps and path.startswith(self._apps):
            return USER  # an app shipped inside a library's or the agent's directory (count_as_app)
        if path.startswith(self._agent):
            return AGENT
        if path.startswith(self._stdlib) and not path.startswith(self._site):
            return STDLIB
        if path.startswith(self._prefixes) or path.startswith(self._scripts):
            return LIBRARY
        return USER

    def count_as_app(self, directory: str) -> None:
        self._apps = (*self._apps, os.path.realpath(directory) + os.sep)
        self.owner.cache_clear()

    def is_library(self, filename: str) -> bool:
        return self.owner(filename) != USER


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
    """Not the user's code (see the module's docstring)."""
    return _index.owner(filename) != USER


def is_user_file(filename: str) -> bool:
    return _index.owner(filename) == USER


def owner(filename: str) -> str:
    return _index.owner(filename)


def is_agent_file(filename: str) -> bool:
    """The agent's own code (not the OpenTelemetry SDK's, not an app registered with count_as_app)."""
    return filename.startswith(_AGENT_DIR + os.sep) and _index.owner(filename) == AGENT


def count_as_app(directory: str) -> None:
    """Code under ``directory`` is the app's, though it sits inside the agent's (or a library's)
    directory: an app shipped in the same distribution calls this when it is imported."""
    _index.count_as_app(directory)


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
    owner_of = _index.owner
    for info in stack:
        if owner_of(info.filename) == USER:
            return info
    return None


def first_owner(stack: Iterable[FrameInfo]) -> tuple[str, FrameInfo | None]:
    """Whose code is running: the owner of the innermost frame outside the standard library.

    ``json.dumps`` called by the agent's log formatter is the agent's; called by Starlette's
    ``JSONResponse.render``, a library's. (STDLIB, None) when only the standard library is running.
    """
    owner_of = _index.owner
    for info in stack:
        who = owner_of(info.filename)
        if who != STDLIB:
            return who, info
    return STDLIB, None


def user_frame(frame: types.FrameType | None, limit: int = 64) -> types.FrameType | None:
    """The innermost frame of the user's code from ``frame`` outwards (a live frame; no traceback
    is built). The one walker every signal uses."""
    owner_of = _index.owner
    depth = 0
    while frame is not None and depth < limit:
        if owner_of(frame.f_code.co_filename) == USER:
            return frame
        frame = frame.f_back
        depth += 1
    return None


# (file, line, function) -> Location: the same site is met again and again (a checkout, a statement);
# building its Location (a relative path) costs more than the walk. Bounded: the app's lines are few.
_locations: dict[tuple[str, int, str], Location] = {}


def frame_location(frame: types.FrameType | None, limit: int = 64) -> Location | None:
    """The user's line from ``frame`` outwards (see :func:`user_frame`), as a shared Location."""
    found = user_frame(frame, limit)
    if found is None:
        return None
    code = found.f_code
    key = (code.co_filename, found.f_lineno or 0, code.co_qualname)
    location = _locations.get(key)
    if location is None:
        location = Location(display_path(key[0]), key[1], key[2])
        if len(_locations) < 4096:
            _locations[key] = location
    return location


def caller_location(skip: int = 1, limit: int = 64) -> Location | None:
    """Cheap walk from the caller to the first frame of user code (no traceback is built)."""
    return frame_location(sys._getframe(skip + 1), limit)


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
    a middleware layer's own code means slow middleware, anything else blocking I/O. A library's
    middleware (CORSMiddleware) around the user's code met first is not the blame: that code is the
    app's (an endpoint or dependency the hooks did not register), and it runs inside every layer.
    """
    owner_of = _index.owner
    user_seen = False
    for info in stack:
        if (info.module, info.code.co_name) in SERIALISATION_FUNCTIONS:
            return "large_payload", None
        role = _code_roles.get(info.code)
        if role is not None:
            if role[0] == "middleware" and not (user_seen and owner_of(info.filename) != USER):
                return "slow_middleware", role[1]
            return "blocking_io", None
        if not user_seen:
            user_seen = owner_of(info.filename) == USER
    return "blocking_io", None
