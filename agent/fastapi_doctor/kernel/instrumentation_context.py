"""One record of everything the agent installs, each with its undo: ``undo()`` takes all of it back.

The agent makes one :class:`Instrumentation` (``agent.instrumentation``) and every signal installs
through it: a patched attribute, a SQLAlchemy event listener, an item in a callback list (the loop
hub's tick callbacks, ``gc.callbacks``), a per-request hook at a declared place in the order, a stack
wrapper or app hook once fastapi is hooked, a hook on a library's import. Each call does the thing
and records how to take it back; ``undo()`` runs the records newest first, each contained, so one
failure leaves the others to run. A signal keeps no undo list of its own: its ``uninstrument()``, if
it has one, only stops what runs (its thread) and flushes.

Install time only: nothing here runs per request. What an install puts on the request path (a hook,
a wrapper) is the signal's own plain function, as before (docs/performance.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, MutableSequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Protocol

from fastapi_doctor import _imports, containment

Undo = Callable[[], object]
RequestHook = Callable[[Any], None]

# The declared order of the per-request hooks (``on_request_finished``): lower runs first, equal ones
# in the order they were added. The publishers read what the signals' hooks found for the request.
SIGNALS = 0
PUBLISHERS = 100

_MISSING = object()


class StackHooks(Protocol):
    """What the agent's FastAPI hooks offer signals (``instrumentation.FastAPIHooks``)."""

    active: bool
    app_hooks: list[Callable[[Any], None]]
    stack_wrappers: list[Callable[[Any, Any], Any]]


class Instrumentation:
    """Installs that record their undo. Thread-safe: a loop's first request may install (a loop's task
    factory, a dependency's timer) while the agent starts or stops on another thread."""

    def __init__(self, finished_hooks: Callable[[], MutableSequence[RequestHook]] | None = None) -> None:
        # Where per-request hooks go (the agent's RequestMetrics.finished_hooks), read when one is added.
        self._finished_hooks = finished_hooks
        self._undos: list[tuple[str, Undo]] = []
        self._orders: list[tuple[RequestHook, int]] = []
        self._lock = threading.Lock()
        # fastapi's hooks once the app imported fastapi, and the callbacks waiting for them.
        self.fastapi: StackHooks | None = None
        self._waiting: list[Callable[[StackHooks], None]] = []

    # -- the general form ------------------------------------------------------------------------

    def record(self, undo: Undo, what: str = "") -> None:
        """Remember ``undo`` for :meth:`undo` (``what`` names it if it fails)."""
        with self._lock:
            self._undos.append((what or getattr(undo, "__qualname__", "undo"), undo))

    def install(self, do: Callable[..., object], undo: Callable[..., object], *args: Any) -> None:
        """``do(*args)`` now, ``undo(*args)`` at :meth:`undo` (``logger.addHandler``/``removeHandler``)."""
        do(*args)
        self.record(lambda: undo(*args), getattr(undo, "__qualname__", "undo"))

    def undo(self) -> None:
        """Take back every install, newest first, each contained; empties the record (a second call
        does nothing)."""
        while True:
            with self._lock:
                if not self._undos:
                    self._waiting.clear()
                    self.fastapi = None
                    self._orders.clear()
                    return
                what, undo = self._undos.pop()
            try:
                undo()
            except Exception as exc:
                containment.report(f"uninstrument {what}", exc)

    @contextmanager
    def all_or_nothing(self) -> Iterator[Instrumentation]:
        """Installs that stand together: if the block raises, what it installed is undone (and the
        exception goes on to the caller); if not, it is undone with the rest. Meant for patches and
        listeners: a callback waiting for fastapi belongs on the whole (``self``)."""
        part = Instrumentation(self._finished_hooks)
        try:
            yield part
        except BaseException:
            part.undo()
            raise
        self.record(part.undo, "installs")

    # -- attributes --------------------------------------------------------------------------------

    def patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> Any:
        """Replace ``owner.name`` by ``make(original)``; returns the replacement.

        A class's own attribute (in its ``__dict__``: a descriptor, not yet bound) is restored at undo;
        one it inherits (FastAPI 0.115 takes build_middleware_stack from Starlette) gets the replacement
        on ``owner`` and is deleted at undo, so ``owner`` inherits again and the base is never touched.
        Where someone wrapped the replacement since (contrib's instrumentor over asyncpg), the undo
        leaves it in their chain: taking it out would drop their wrapper too; the signal's wrapper
        passes calls through once the signal is stopped.
        """
        owned = _owns(owner, name)
        original = _original(owner, name, owned)
        replacement = make(original)
        setattr(owner, name, replacement)

        def restore() -> None:
            if _own_value(owner, name) is not replacement:
                return  # wrapped again on top (or already put back): left as it is
            if owned:
                setattr(owner, name, original)
            else:
                delattr(owner, name)

        self.record(restore, f"{getattr(owner, '__name__', type(owner).__name__)}.{name}")
        return replacement

    def wrap(self, owner: Any, name: str, wrapper: Callable[[Any, Any, Any, Any], Any]) -> Any:
        """:meth:`patch` with a wrapt ``FunctionWrapper`` (``wrapper(wrapped, instance, args, kwargs)``)."""
        import wrapt

        return self.patch(owner, name, lambda original: wrapt.FunctionWrapper(original, wrapper))

    # -- listeners and callback lists --------------------------------------------------------------

    def listen(self, target: Any, identifier: str, fn: Callable[..., Any], **kw: Any) -> None:
        """``sqlalchemy.event.listen``, removed at undo (sqlalchemy is imported only here, when called)."""
        from sqlalchemy import event

        event.listen(target, identifier, fn, **kw)

        def remove() -> None:
            if event.contains(target, identifier, fn):
                event.remove(target, identifier, fn)

        self.record(remove, f"sqlalchemy event {identifier}")

    def add(self, collection: MutableSequence[Any], item: Any) -> None:
        """Append ``item`` to a callback list (tick callbacks, ``gc.callbacks``, app hooks, stack
        wrappers); undo removes that one entry."""
        collection.append(item)
        self.record(lambda: _remove_one(collection, item), getattr(item, "__qualname__", "callback"))

    def on_request_finished(self, hook: RequestHook, order: int = SIGNALS) -> None:
        """``hook(state)`` after every request, before the hooks of a higher ``order`` (the publishers'
        :data:`PUBLISHERS` after the signals' :data:`SIGNALS`), after those of the same or a lower one."""
        assert self._finished_hooks is not None, "no request hooks to add to"
        hooks = self._finished_hooks()
        with self._lock:
            orders = self._orders
            at = len(hooks)
            for index, other in enumerate(hooks):
                if next((o for h, o in orders if h == other), SIGNALS) > order:
                    at = index
                    break
            orders.append((hook, order))
            hooks.insert(at, hook)
        self.record(lambda: _remove_one(hooks, hook), getattr(hook, "__qualname__", "request hook"))

    # -- the app's libraries -----------------------------------------------------------------------

    def when_imported(self, module: str, hook: Callable[[ModuleType], None]) -> None:
        """``hook(module)`` once the app imports ``module`` (at once if it has), unless undone before.
        Failures are contained. An import hook cannot be unregistered: undo makes it do nothing."""
        live = [True]

        def run(mod: ModuleType) -> None:
            if live[0]:
                hook(mod)

        self.record(lambda: live.__setitem__(0, False), f"import hook {module}")
        _imports.when_imported(module, run)

    def fastapi_hooked(self, hooks: StackHooks) -> None:
        """The agent's FastAPI hooks exist (installed, or declined on an unsupported FastAPI): the
        callbacks waiting for them run now, each contained."""
        with self._lock:
            self.fastapi = hooks
            waiting, self._waiting = self._waiting, []
        for callback in waiting:
            try:
                callback(hooks)
            except Exception as exc:
                containment.report("fastapi hook", exc)

    def on_fastapi(self, callback: Callable[[StackHooks], None]) -> None:
        """``callback(hooks)`` once fastapi is imported and hooked (at once if it is); one not run yet
        is dropped at undo."""
        with self._lock:
            hooks = self.fastapi
            if hooks is None or not hooks.active:
                self._waiting.append(callback)
                return
        callback(hooks)

    def wrap_stack(self, wrapper: Callable[[Any, Any], Any]) -> None:
        """``wrapper(app, stack) -> stack`` on every middleware stack built once fastapi is hooked."""
        self.on_fastapi(lambda hooks: self.add(hooks.stack_wrappers, wrapper))

    def on_app(self, hook: Callable[[Any], None]) -> None:
        """``hook(app)`` with each app whose middleware stack is built once fastapi is hooked."""
        self.on_fastapi(lambda hooks: self.add(hooks.app_hooks, hook))


def _owns(owner: Any, name: str) -> bool:
    namespace = getattr(owner, "__dict__", None)
    return namespace is None or name in namespace


def _original(owner: Any, name: str, owned: bool) -> Any:
    """The attribute as stored (for a class: the descriptor in its own or a base's ``__dict__``)."""
    if isinstance(owner, type):
        for cls in owner.__mro__:
            if name in cls.__dict__:
                return cls.__dict__[name]
    if owned and hasattr(owner, "__dict__"):
        return owner.__dict__[name]
    return getattr(owner, name)


def _own_value(owner: Any, name: str) -> Any:
    namespace = getattr(owner, "__dict__", None)
    if namespace is None:
        return getattr(owner, name, _MISSING)
    return namespace.get(name, _MISSING)


def _remove_one(collection: MutableSequence[Any], item: Any) -> None:
    try:
        collection.remove(item)
    except ValueError:
        pass
