"""The one configuration object that the dashboards and the alert rules fill in.

Thresholds are the agent's own defaults (read from ``fastapi_doctor.config``), so a panel's red line,
an alert's threshold and the agent's finding all mean the same figure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fastapi_doctor import config as agent_config
from fastapi_doctor.diagnosis import registry

ROOT_CAUSES: tuple[str, ...] = agent_config.ROOT_CAUSES
TITLES: dict[str, str] = registry.TITLES


def phrase(root_cause: str) -> str:
    """A root cause's title inside a sentence: "Heavy middleware" -> "heavy middleware"."""
    title = TITLES[root_cause]
    return title[:1].lower() + title[1:]

_DEFAULTS = {s.field: s.default for s in agent_config.SETTINGS}


@dataclass(frozen=True)
class Thresholds:
    """The agent's defaults, in the units of the Prometheus series (seconds, bytes, counts)."""

    loop_block_seconds: float = _DEFAULTS["loop_block_ms"] / 1000.0
    slow_dependency_seconds: float = _DEFAULTS["slow_dependency_ms"] / 1000.0
    slow_middleware_seconds: float = _DEFAULTS["slow_middleware_ms"] / 1000.0
    leak_seconds: float = _DEFAULTS["leak_seconds"]
    large_response_bytes: int = _DEFAULTS["large_response_bytes"]
    n_plus_one_statements: int = _DEFAULTS["n_plus_one_threshold"]
    task_leak_seconds: float = _DEFAULTS["task_leak_seconds"]
    slow_request_seconds: float = _DEFAULTS["slow_request_ms"] / 1000.0
    # Share of wall time the loop may spend blocked before the blocked-time alert fires.
    blocked_share: float = 0.10
    # Share of the pool's connections in use, on average over the window, that is saturation.
    pool_saturation: float = 0.9
    # Share of wall time the loop is blocked (or busy serialising responses) above which time spent
    # awaiting (dependencies, middleware) is not their own: the stall is counted in it.
    stalled_share: float = 0.02


@dataclass(frozen=True)
class Config:
    # Label matchers added to every alert expression, e.g. 'job="checkout"' (empty: every target).
    alert_selector: str = ""
    # Label matchers of every dashboard query; the template variables fill them in.
    dashboard_selector: str = 'job=~"$job", instance=~"$instance"'
    route_selector: str = 'http_route=~"$route"'
    # Range of the rates and ratios of the alert expressions.
    window: str = "5m"
    # How long a condition holds before its alert fires, by severity.
    for_warning: str = "10m"
    for_critical: str = "5m"
    for_info: str = "1m"
    thresholds: Thresholds = field(default_factory=Thresholds)
    # runbook_url of every alert: the pattern filled with the base URL and the alert's root cause.
    runbook_base_url: str = "https://github.com/fastapi-doctor/fastapi-doctor/blob/main"
    runbook_url_pattern: str = "{base}/docs/runbooks/{root_cause}.md"
    # Grafana.
    dashboard_uid: str = "fastapi-doctor-overview"
    dashboard_title: str = "fastapi-doctor overview"
    dashboard_tags: tuple[str, ...] = ("fastapi", "fastapi-doctor")
    # 39: the schema of Grafana 10.4 and 11.0; Grafana 11.x migrates it on load, 10.x loads it as is.
    schema_version: int = 39
    refresh: str = "30s"
    # Metric that lists the job/instance/route values of the template variables.
    variable_metric: str = "http_server_request_duration_seconds_count"

    def runbook_url(self, root_cause: str) -> str:
        return self.runbook_url_pattern.format(base=self.runbook_base_url.rstrip("/"), root_cause=root_cause)

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DEFAULT = Config()
