"""One module per signal. Each signal observes and reports findings; it never formats output.

A signal is a class with a ``name`` (its detector name, see ``config.DETECTORS``) and
``instrument(agent)``, which installs everything through ``agent.instrumentation`` (the agent's
:class:`~fastapi_doctor.kernel.instrumentation_context.Instrumentation`: each install records its
undo, and the agent undoes them all when it stops). A signal that runs something (a thread) has
``uninstrument()`` too, which only stops it; the agent calls it, if present, before the undo.
Importing a signal module must not import the app's libraries (fastapi, starlette, sqlalchemy):
hook them with ``agent.instrumentation.when_imported``.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol


class Signal(Protocol):
    name: str

    def instrument(self, agent: Any) -> None: ...


# (detector name, "module:Class"), in start-up order. Later issues add theirs here.
REGISTRY: list[tuple[str, str]] = [
    # eventloop, threadpool, gc: share the loop heartbeat (kernel.loop.hub).
    ("eventloop", "fastapi_doctor.signals.eventloop:EventLoopSignal"),
    ("threadpool", "fastapi_doctor.signals.threadpool:ThreadpoolSignal"),
    ("gc", "fastapi_doctor.signals.gc_pauses:GCSignal"),
    ("process", "fastapi_doctor.signals.process:ProcessSignal"),
    ("db", "fastapi_doctor.signals.database.db:DatabaseSignal"),
    ("asyncpg", "fastapi_doctor.signals.database.asyncpg_pool:AsyncpgSignal"),
    # request path: dependencies before middleware before responses (responses' stack counter may sit
    # below a middleware timer; undo runs in reverse).
    ("dependencies", "fastapi_doctor.signals.dependencies:DependencySignal"),
    ("middleware", "fastapi_doctor.signals.middleware_timing:MiddlewareSignal"),
    ("responses", "fastapi_doctor.signals.responses:ResponseSignal"),
    ("tasks", "fastapi_doctor.signals.tasks:TaskSignal"),
]


def load(detector: str, target: str) -> Signal:
    """The signal (or publisher: ``publish.REGISTRY``) named by ``"module:Class"``."""
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    signal: Signal = getattr(module, class_name)()
    return signal
