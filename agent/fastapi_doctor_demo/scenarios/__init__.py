"""What the demo does to the patient and what the agent must conclude: one scenario per root cause.

Each module of this package is one scenario: its :data:`SCENARIO` holds the sick route and its healthy
twin (an ``APIRouter`` the patient includes, or middleware it adds), the paths the demo loads them
with, the bug, the fix, and the functions a finding must name. Each scenario loads a sick route and
its healthy twin at the same time; the agent must name the root cause on the sick route, at a culprit's
line, and report nothing on the twin. A module found here needs no list: the patient
(:mod:`fastapi_doctor_demo.patient`), the runner and the tests read :data:`SCENARIOS`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

from fastapi_doctor.diagnosis.registry import RUNBOOK_PATH, TITLES


@dataclass(frozen=True)
class Scenario:
    root_cause: str
    # The route template the finding must name; None when the finding is about a layer that runs on
    # every route (a middleware): then any route, or none, matches.
    route: str | None
    sick_paths: tuple[str, ...]  # requests that show the problem
    healthy_route: str | None
    healthy_paths: tuple[str, ...]  # the same job done right, sent alongside
    bug: str  # what is wrong in the patient's code, in one line
    fix: str  # the fix, in one line
    detectors: tuple[str, ...]  # detectors that can find it (config.DETECTORS)
    # The patient's functions a finding must name as its location (the buggy code a user opens).
    culprits: tuple[Callable[..., Any], ...] = ()
    # What the patient serves for this scenario: the sick route and its healthy twin, and middleware
    # (class, options) added in this order (the last added runs first).
    router: APIRouter | None = None
    middleware: tuple[tuple[type, dict[str, Any]], ...] = ()
    twin: str = ""  # the healthy twin when it is not a route
    requests: int = 40  # sick requests per run (as many healthy ones go alongside)
    quick_requests: int = 24
    concurrency: int = 8
    wait_s: float = 10.0  # how long to wait for the finding once the load is done
    note: str = ""  # printed under the load's figures

    @property
    def title(self) -> str:
        return TITLES[self.root_cause]

    @property
    def runbook(self) -> str:
        return RUNBOOK_PATH.format(root_cause=self.root_cause)

    @property
    def culprit_files(self) -> dict[str, str]:
        """Each culprit's qualified name (as a finding's location names it) and its file, relative to
        the package's parent (``fastapi_doctor_demo/pricing.py``)."""
        return {f.__qualname__: f.__module__.replace(".", "/") + ".py" for f in self.culprits}


def cycle(template: str, values: range | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(template.format(v) for v in values)


# The order the demo runs them in; a scenario not named here follows them, by name.
RUN_ORDER = ("blocking_io", "dependency_rebuild", "n_plus_one", "large_payload", "slow_middleware", "pool_leak",
             "task_leak")


def _scenarios() -> list[Scenario]:
    modules = (importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__))
    found = [module.SCENARIO for module in modules if hasattr(module, "SCENARIO")]
    rank = {name: i for i, name in enumerate(RUN_ORDER)}
    return sorted(found, key=lambda s: (rank.get(s.root_cause, len(rank)), s.root_cause))


SCENARIOS: tuple[Scenario, ...] = tuple(_scenarios())

BY_ROOT_CAUSE = {s.root_cause: s for s in SCENARIOS}
