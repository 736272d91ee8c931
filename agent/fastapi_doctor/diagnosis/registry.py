"""The root causes: each one's rule module, title and runbook, in the order the page shows them.

``config.ROOT_CAUSES``, the page's titles, the runbook links and (through ``config``) the dashboards'
rows and alert rules are derived from :data:`REGISTRY`. A new root cause is one rule module here, one
runbook (docs/runbooks/ and its packaged copy), one demo scenario and its tests (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from fastapi_doctor.diagnosis import (
    blocking_io,
    dependency_rebuild,
    large_payload,
    n_plus_one,
    pool_leak,
    slow_middleware,
    task_leak,
)

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


REGISTRY: tuple[RootCause, ...] = tuple(
    _of(rule)
    for rule in (blocking_io, dependency_rebuild, pool_leak, slow_middleware, large_payload, n_plus_one, task_leak)
)
ROOT_CAUSES: tuple[str, ...] = tuple(cause.name for cause in REGISTRY)
TITLES: dict[str, str] = {cause.name: cause.title for cause in REGISTRY}
