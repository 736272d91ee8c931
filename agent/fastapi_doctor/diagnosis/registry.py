"""The root causes: each one's rule module, title and runbook, in the order the page shows them, and
the routing of observations to the rules that decide them (:class:`Diagnosis`).

Every module of this package that defines ``ROOT_CAUSE`` is a rule, found here without being listed:
``config.ROOT_CAUSES``, the page's sections and titles, the runbook links, the dashboards' rows and
the alert rules follow from :data:`REGISTRY`, and the observation types it decides from its
``decides(settings)``. A new root cause is one rule module, one runbook (docs/runbooks/), one demo
scenario and its tests (docs/design.md, "How to add a root cause").
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fastapi_doctor import diagnosis
from fastapi_doctor.diagnosis import FirstNamed, Findings, Verdict, publish

if TYPE_CHECKING:
    from fastapi_doctor.config import Settings

RUNBOOK_PATH = "docs/runbooks/{root_cause}.md"


@dataclass(frozen=True, slots=True)
class RootCause:
    name: str
    title: str
    rule: ModuleType  # holds ROOT_CAUSE, TITLE and its decide functions

    @property
    def runbook(self) -> str:
        return RUNBOOK_PATH.format(root_cause=self.name)

    def basis(self, evidence: dict[str, Any]) -> str:
        """``fact`` when a finding of this cause is a thing that happened (a call, a count, a size, a
        connection left out); ``timing`` when it is a duration over a threshold, which a busy machine can
        cross (the rule's ``basis(evidence)``; a rule without one finds facts only)."""
        decide = getattr(self.rule, "basis", None)
        return decide(evidence) if decide is not None else "fact"


def _of(rule: ModuleType) -> RootCause:
    return RootCause(rule.ROOT_CAUSE, rule.TITLE, rule)


# The page's order; a rule module not named here follows them, by name.
PAGE_ORDER = ("blocking_io", "dependency_rebuild", "pool_leak", "slow_middleware", "large_payload", "n_plus_one",
              "task_leak")


def _rules() -> list[ModuleType]:
    modules = (importlib.import_module(f"{diagnosis.__name__}.{info.name}")
               for info in pkgutil.iter_modules(diagnosis.__path__) if info.name != "registry")
    rules = [module for module in modules if hasattr(module, "ROOT_CAUSE")]
    rank = {name: i for i, name in enumerate(PAGE_ORDER)}
    return sorted(rules, key=lambda rule: (rank.get(rule.ROOT_CAUSE, len(rank)), rule.ROOT_CAUSE))


REGISTRY: tuple[RootCause, ...] = tuple(_of(rule) for rule in _rules())
ROOT_CAUSES: tuple[str, ...] = tuple(cause.name for cause in REGISTRY)
TITLES: dict[str, str] = {cause.name: cause.title for cause in REGISTRY}
BY_NAME: dict[str, RootCause] = {cause.name: cause for cause in REGISTRY}
# What the pytest plugin does with a cause's findings by default: listed, not failed (a rule's
# ``IN_TESTS = "report"``); failed even when they are timings (``TIMING_FAILS_IN_TESTS = True``).
REPORTED_IN_TESTS = frozenset(cause.name for cause in REGISTRY if getattr(cause.rule, "IN_TESTS", "fail") == "report")
TIMING_FAILS_IN_TESTS = frozenset(cause.name for cause in REGISTRY if getattr(cause.rule, "TIMING_FAILS_IN_TESTS", False))


# (root cause, the root cause it refines or None, its decision over one observation)
_Route = tuple[str, "str | None", Callable[[Any], Any]]


class Diagnosis:
    """Routes each observation to the rules that declared its type and publishes their verdicts.

    One per agent, built with its settings (the rules' thresholds are bound here, once); its
    :meth:`report` is ``agent.report``, what signals and the kernel hand observations to. Called where
    a signal has something to decide (a window due, a watchdog round, a request with repeated
    statements), never on every request.

    A rule that names a narrower cause of another's evidence says so (``REFINES = "blocking_io"``):
    when it reaches a verdict on an observation, the rule it refines publishes none on that one."""

    def __init__(self, settings: Settings, findings: Findings, causes: Iterable[RootCause] = REGISTRY) -> None:
        routes: dict[type, list[_Route]] = {}
        for cause in causes:
            refines = getattr(cause.rule, "REFINES", None)
            for kind, decide in cause.rule.decides(settings).items():
                routes.setdefault(kind, []).append((cause.name, refines, decide))
        self.routes: dict[type, tuple[_Route, ...]] = {kind: tuple(rules) for kind, rules in routes.items()}
        self.findings = findings
        self.places = FirstNamed()

    def decide(self, observation: object) -> list[Verdict]:
        """Every verdict the rules reach on ``observation`` (in the registry's order)."""
        decided: list[tuple[str, Verdict]] = []
        refined: set[str] = set()
        for name, refines, decide in self.routes.get(type(observation), ()):
            reached = decide(observation)
            if reached is None:
                continue
            for verdict in (reached,) if isinstance(reached, Verdict) else reached:
                if verdict.keeps_place_of is not None:
                    verdict = self.places.keep(verdict.keeps_place_of, verdict)
                decided.append((name, verdict))
                if refines is not None:
                    refined.add(refines)
        return [verdict for name, verdict in decided if name not in refined]

    def report(self, observation: object) -> bool:
        """Decide ``observation`` and publish the verdicts; True when there was one."""
        verdicts = self.decide(observation)
        for verdict in verdicts:
            publish(self.findings, verdict)
        return bool(verdicts)
