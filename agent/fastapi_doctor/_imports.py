"""Run a hook when the app imports a library, never before (the agent must not change import order)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType

import wrapt

_log = logging.getLogger("fastapi_doctor")


def when_imported(module: str, hook: Callable[[ModuleType], None]) -> None:
    """Call ``hook(module)`` once ``module`` is imported (at once if it already is). Failures are contained."""

    def run(mod: ModuleType) -> None:
        try:
            hook(mod)
        except Exception:
            _log.exception("fastapi-doctor: hook for %s failed; the app runs without it", module)

    wrapt.register_post_import_hook(run, module)
