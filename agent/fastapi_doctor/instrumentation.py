"""Hooks into FastAPI, installed when the app imports fastapi, undone with the agent's other installs.

Narrow patch points:

* ``FastAPI.build_middleware_stack`` (Starlette's, inherited, on FastAPI versions that do not define
  their own): the built stack is wrapped in the agent's middleware, and app-level hooks of the
  signals (dependency and middleware timing) run on the app.
* ``FastAPI.__init__`` (native telemetry only): FastAPI's telemetry gets the agent's ``exclude``
  (head sampling at admission) and leaves request metrics to the agent, which measures every
  request; a user's own ``exclude`` or ``metrics`` setting wins.
* ``fastapi.routing._route_selected`` (native telemetry), else Starlette's ``Route.handle``: the route
  template of every request while it runs, sampled or not, and the task that runs its endpoint.

Supported: FastAPI 0.100 and newer (:data:`SUPPORTED_FROM`). On an older FastAPI, or one whose hooks
cannot be installed, nothing is patched: one warning names the version and the supported range, and
``/doctor`` and the doctor page say that diagnosis is off.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi_doctor import containment, sampling
from fastapi_doctor.kernel.instrumentation_context import Instrumentation
from fastapi_doctor.context import current_request
from fastapi_doctor.middleware import DoctorMiddleware, RequestMetrics

_log = logging.getLogger("fastapi_doctor")

AppHook = Callable[[Any], None]


# The oldest FastAPI the hooks are tested on (CI runs the diagnosis tests on 0.100, 0.115 and the newest).
SUPPORTED_FROM = (0, 100)
SUPPORTED_RANGE = "FastAPI 0.100 or newer"


def _version_tuple(version: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else ()


_NO_CONFIG: dict[str, Any] = {}


def fastapi_has_native_telemetry() -> bool:
    import fastapi.routing

    return hasattr(fastapi.routing, "_route_selected")


class FastAPIHooks:
    """Patches fastapi through the agent's instrumentation context, which takes them back."""

    def __init__(self, metrics: RequestMetrics, configure_telemetry: bool = True) -> None:
        self.metrics = metrics
        # False in test mode: the agent exports nothing there, so FastAPI's own telemetry stays as
        # the app configured it (its metrics, its exclude hook).
        self.configures_telemetry = configure_telemetry
        # Signals add app hooks: each runs once per built middleware stack, with the app.
        self.app_hooks: list[AppHook] = []
        # Signals add stack wrappers: each takes (app, built stack) and returns the stack to use.
        self.stack_wrappers: list[Callable[[Any, Any], Any]] = []
        self._native = False
        self.active = False
        # Why the hooks are not installed (an unsupported FastAPI), for /doctor; None when they are.
        self.unsupported: str | None = None

    # -- install / undo ------------------------------------------------------------------------

    def instrument(self, instrumentation: Instrumentation) -> None:
        if self.active:
            return
        import fastapi

        version = str(getattr(fastapi, "__version__", "unknown"))
        if _version_tuple(version) < SUPPORTED_FROM:
            self._decline(version, "too old")
            return
        try:
            with instrumentation.all_or_nothing() as installs:
                self._install(installs)
        except Exception as exc:  # a FastAPI whose internals moved: the app runs without the hooks
            self._decline(version, f"its hooks could not be installed ({type(exc).__name__})")
            return
        self.active = True
        instrumentation.record(self._deactivate)

    def _deactivate(self) -> None:
        self.active = False

    def _install(self, installs: Instrumentation) -> None:
        import fastapi.applications
        import fastapi.routing

        installs.wrap(fastapi.applications.FastAPI, "build_middleware_stack", self._build_middleware_stack)
        self._native = fastapi_has_native_telemetry()
        if self._native:
            installs.wrap(fastapi.applications.FastAPI, "__init__", self._init)
            # The two hooks every request runs are plain functions, not wrapt wrappers: a wrapt
            # descriptor binds a new wrapper object and packs the arguments on every call (measured:
            # docs/performance.md, decision 11).
            if _MARK_COROUTINE_FUNCTION is not None:
                installs.patch(fastapi.applications.FastAPI, "__call__", _admitting_call)
            else:
                # Before 3.12 only a real coroutine function (or wrapt's proxy of one) passes
                # inspect.iscoroutinefunction, which servers such as Hypercorn ask.
                installs.wrap(fastapi.applications.FastAPI, "__call__", self._call)
            installs.patch(fastapi.routing, "_route_selected", _route_selected_hook)
        else:
            import starlette.routing

            installs.wrap(starlette.routing.Route, "handle", self._route_handle)

    def _decline(self, version: str, why: str) -> None:
        self.unsupported = f"FastAPI {version} is not supported ({why}); supported: {SUPPORTED_RANGE}"
        _log.warning(
            "fastapi-doctor: %s. Diagnosis is off: requests are not measured or diagnosed; the app runs unchanged.",
            self.unsupported,
        )

    # -- wrappers ------------------------------------------------------------------------------

    def _init(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
        wrapped(*args, **kwargs)
        try:
            self.configure_telemetry(instance, kwargs.get("telemetry") or {})
        except Exception as exc:
            containment.report("fastapi telemetry configuration", exc)

    def _call(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        # As _admitting_call, through wrapt (Python 3.11). uvicorn calls the app once with no
        # argument at start-up (its factory probe).
        try:
            scope = args[0] if args else kwargs.get("scope")
            if scope is not None and _declined(instance, scope):
                scope["fastapi.telemetry"] = None
        except Exception as exc:
            containment.report("fastapi admission", exc)
        return wrapped(*args, **kwargs)

    def configure_telemetry(self, app: Any, user: dict[str, Any]) -> None:
        config = getattr(app, "_telemetry", None)
        if not isinstance(config, dict) or not self.configures_telemetry:
            return
        # An app that hands FastAPI its own providers gets FastAPI's telemetry as it asked for it: the
        # agent's sampling and metrics apply to the global providers only.
        if config.get("exclude") is None and config.get("tracer_provider") is None:
            config["exclude"] = sampling.exclude_unsampled
        if "metrics" not in user and config.get("meter_provider") is None:
            # The agent records http.server.request.duration for every request itself.
            config["metrics"] = False

    def _build_middleware_stack(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        stack = wrapped(*args, **kwargs)
        if not self.active:  # uninstrumented, but wrapped by someone else since: passes through
            return stack
        try:
            for hook in self.app_hooks:
                try:
                    hook(instance)
                except Exception as exc:
                    containment.report(getattr(hook, "__qualname__", "app hook"), exc)
            outer = _expected_outer_layer(instance, stack)
            if outer is not None:
                stack = outer.app
            for wrap in self.stack_wrappers:
                try:
                    stack = wrap(instance, stack)
                except Exception as exc:
                    containment.report(getattr(wrap, "__qualname__", "stack wrapper"), exc)
            doctor = DoctorMiddleware(stack, self.metrics, admits=not self._native)
            if outer is None:
                return doctor
            outer.app = doctor
            return outer
        except Exception as exc:
            containment.report("build_middleware_stack", exc)
            return stack

    def _route_handle(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        # FastAPI without the route hook: the matched route, as it starts (mounts included, through
        # the root path that each Mount extends).
        try:
            state = current_request.get()
            if state is not None:
                path = getattr(instance, "path_format", None)
                scope = args[0] if args else kwargs.get("scope")
                if path is not None and scope is not None:
                    state.route = scope.get("root_path", "").rstrip("/") + path
                    state.inner_task = asyncio.current_task()
        except Exception as exc:
            containment.report("route hook", exc)
        return wrapped(*args, **kwargs)


# Python 3.12+: marks a plain function that returns a coroutine as a coroutine function, for the
# servers and frameworks that pick the ASGI interface by asking (``inspect`` and ``asyncio`` both honour it).
_MARK_COROUTINE_FUNCTION = getattr(inspect, "markcoroutinefunction", None)


def _declined(app: Any, scope: Any) -> bool:
    """An HTTP request that head sampling does not admit, to an app whose FastAPI telemetry the agent
    configured (an app that gave FastAPI its own provider or exclude hook gets its telemetry as it
    asked for it)."""
    return (
        scope["type"] == "http"
        and "fastapi.telemetry" not in scope
        and getattr(app, "_telemetry", _NO_CONFIG).get("exclude") is sampling.exclude_unsampled
        and not sampling.admit(scope)
    )


def _admitting_call(original: Any) -> Any:
    """``FastAPI.__call__`` taking the sampling decision first.

    Fast path for requests not admitted by head sampling: FastAPI skips its telemetry for a scope
    that already carries "fastapi.telemetry" (as for a mounted app), which saves the per-request work
    its `exclude` path still does (measured ~14 us). `exclude` stays set, so the decision holds on
    FastAPI versions where this key means nothing. Returns the original's coroutine: no frame of its own.
    """

    @functools.wraps(original)
    def __call__(self: Any, scope: Any, receive: Any, send: Any) -> Any:
        try:
            if _declined(self, scope):
                scope["fastapi.telemetry"] = None
        except Exception as exc:
            containment.report("fastapi admission", exc)
        return original(self, scope, receive, send)

    return _MARK_COROUTINE_FUNCTION(__call__)


def _route_selected_hook(original: Any) -> Any:
    """``fastapi.routing._route_selected``: notes the route template of every request while it runs,
    sampled or not, and the task that runs its endpoint."""
    get_request = current_request.get
    current_task = asyncio.current_task

    @functools.wraps(original)
    def _route_selected(*, scope: Any, path: str | None, mount: bool = False) -> None:
        try:
            state = get_request()
            if state is not None and path is not None:
                if mount:
                    prefix = path.removesuffix("/{path}")
                    state.mount_prefix += prefix
                    state.route = state.mount_prefix + "/{path}"
                else:
                    state.route = state.mount_prefix + path
                # The task that runs the endpoint (may differ from the middleware's task).
                state.inner_task = current_task()
        except Exception as exc:
            containment.report("route hook", exc)
        return original(scope=scope, path=path, mount=mount)  # type: ignore[no-any-return]

    return _route_selected


def _expected_outer_layer(app: Any, stack: Any) -> Any:
    """The stack's ``ServerErrorMiddleware`` when another wrapper of this app's build_middleware_stack
    (contrib's FastAPI instrumentation, an instance attribute) takes the stack apart and expects it
    outermost; the agent's middleware then goes inside it. None otherwise."""
    if "build_middleware_stack" not in getattr(app, "__dict__", {}):
        return None
    from starlette.middleware.errors import ServerErrorMiddleware

    return stack if isinstance(stack, ServerErrorMiddleware) else None


def instrument_app(app: Any, hooks: FastAPIHooks) -> None:
    """Make sure an app built before the agent started is measured too."""
    if not hooks.active:
        return
    if fastapi_has_native_telemetry():
        hooks.configure_telemetry(app, {})
    stack = getattr(app, "middleware_stack", None)
    if stack is not None and not isinstance(stack, DoctorMiddleware):
        app.middleware_stack = app.build_middleware_stack()
