"""The root causes: each one's rule module, title and runbook, in the order the page shows them.

Every module of this package that defines ``ROOT_CAUSE`` is a rule, found here without being listed:
``config.ROOT_CAUSES``, the page's sections and titles, the runbook links, the dashboards' rows and
the alert rules follow from :data:`REGISTRY`. A new root cause is one rule module, one runbook
(docs/runbooks/), one demo scenario and its tests (docs/design.md, "How to add a root cause").
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType

from fastapi_doctor import diagnosis

RUNBOOK_PATH = "docs/runbooks/{root_cause}.md"


@dataclass(frozen=True, slots=True)
class RootCause:
    name: str
    title: str
    rule: ModuleType  # holds ROOT_CAUSE, TITLE and its decide functions

    @property
    def runbook(self) -> str:
        return RUNBOOK_PATH.format(root_cause=self.name)


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
