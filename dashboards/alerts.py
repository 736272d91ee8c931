"""Prometheus alert rules: a group per root cause, built on the signals (rates, quantiles and ratios
over a window, with ``for:``), plus one rule per root cause on the agent's findings counter.

Every rule carries the labels ``root_cause`` and ``severity`` and the annotations ``summary`` and
``description`` (naming the route, layer or pool and the figure). ``runbook_url`` is never written by
hand: :func:`add_runbook_links` adds it to every rule from the configured pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dashboards.config import ROOT_CAUSES, Config, phrase
from dashboards.promql import mean, quantile, sel

# A finding's alert is per finding (its finding_id), with the finding's line of code when known.
FINDING_LABELS = ("job", "instance", "http_route", "finding_id")
LOCATION_LABELS = ("code_file_path", "code_line_number", "code_function_name")


@dataclass(frozen=True)
class Alert:
    name: str
    root_cause: str
    severity: str  # critical, warning or info
    expr: str
    summary: str
    description: str

    def rule(self, cfg: Config) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": {"critical": cfg.for_critical, "warning": cfg.for_warning, "info": cfg.for_info}[self.severity],
            "labels": {"root_cause": self.root_cause, "severity": self.severity},
            "annotations": {"summary": self.summary, "description": self.description},
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g}ms"


def _where(labels: str = "") -> str:
    """The target an alert fired for, at the start of each description."""
    return "{{ $labels.job }}/{{ $labels.instance }}" + labels


def _blocking_io_share(cfg: Config) -> str:
    """Share of the loop's blocked time that the agent attributed to blocking calls."""
    blocked = "fastapi_doctor_eventloop_blocked_time_seconds_total"
    by_blocking_io = sel(cfg.alert_selector, 'root_cause="blocking_io"')
    return (f"(sum by (job, instance) (rate({blocked}{by_blocking_io}[{cfg.window}]))\n"
            f"  / sum by (job, instance) (rate({blocked}{sel(cfg.alert_selector)}[{cfg.window}])))")


def _loop_healthy(cfg: Config) -> str:
    """``unless`` clause: awaited time is not a dependency's or middleware's own while the loop stalls:
    p99 lag past a blocked episode, or the loop blocked, or busy serialising responses, more than
    ``stalled_share`` of the time (serialisation runs on the loop in small steps, not as episodes)."""
    t = cfg.thresholds
    lag = quantile(0.99, "fastapi_doctor_eventloop_lag_seconds", sel(cfg.alert_selector), cfg.window, "job", "instance")
    blocked = (f"sum by (job, instance) (rate(fastapi_doctor_eventloop_blocked_time_seconds_total"
               f"{sel(cfg.alert_selector)}[{cfg.window}]))")
    serialising = (f"sum by (job, instance) (rate(fastapi_doctor_response_serialize_duration_seconds_sum"
                   f"{sel(cfg.alert_selector)}[{cfg.window}]))")
    return (f"\nunless on (job, instance)\n(\n  {lag} > {t.loop_block_seconds:g}\n  or\n"
            f"  {blocked} > {t.stalled_share:g}\n  or\n  {serialising} > {t.stalled_share:g}\n)")


def _findings(cfg: Config, root_cause: str, name: str, what: str) -> Alert:
    s = sel(cfg.alert_selector, f'root_cause="{root_cause}"')
    by_finding = f"sum by ({', '.join(FINDING_LABELS)})"
    # New findings in the window: a count that grew, or a series that did not exist a window ago (a
    # finding's counter appears at its first report, so its first increase has no sample before it).
    new = (f"(\n  ({by_finding} (increase(fastapi_doctor_findings_total{s}[{cfg.window}])) > 0)\n  or\n"
           f"  ({by_finding} (fastapi_doctor_findings_total{s}\n"
           f"    unless fastapi_doctor_findings_total{s} offset {cfg.window}) > 0)\n)")
    located = ", ".join(LOCATION_LABELS)
    return Alert(
        name=name,
        root_cause=root_cause,
        severity="info",
        # With the finding's line of code from its info series (joined by finding_id); without it when
        # the info series is gone (the finding was evicted) or the agent predates it.
        expr=(f"{new}\n* on (job, instance, finding_id) group_left ({located})\n"
              f"  max by (job, instance, finding_id, {located}) (fastapi_doctor_finding_info{s})\n"
              f"or on (job, instance, finding_id)\n{new}"),
        summary=f"fastapi-doctor reported {what} on {{{{ $labels.http_route }}}}",
        description=(
            _where() + f": the agent reported {{{{ $value | humanize }}}} {root_cause} finding(s)"
            "{{ if $labels.http_route }} on route {{ $labels.http_route }}{{ end }}"
            "{{ if $labels.code_file_path }} at {{ $labels.code_file_path }}:{{ $labels.code_line_number }} "
            "in {{ $labels.code_function_name }}{{ end }}"
            " in the last " + cfg.window + "; /doctor on the side server has the evidence, "
            "`fastapi-doctor report --prometheus` the other instances."
        ),
    )


def blocking_io(cfg: Config) -> list[Alert]:
    t, w, a = cfg.thresholds, cfg.window, cfg.alert_selector
    return [
        Alert(
            "FastAPIDoctorEventLoopBlocked", "blocking_io", "warning",
            "sum by (job, instance, http_route) (rate(fastapi_doctor_eventloop_blocked_time_seconds_total"
            + sel(a, 'root_cause="blocking_io"') + f"[{w}])) > {t.blocked_share:g}",
            "Blocking calls on {{ $labels.http_route }} stall the event loop",
            _where() + ": requests to {{ $labels.http_route }} kept the event loop blocked "
            "{{ $value | humanizePercentage }} of the time over the last " + w
            + f" (threshold {t.blocked_share:.0%}); every concurrent request waited meanwhile.",
        ),
        Alert(
            "FastAPIDoctorEventLoopLagHigh", "blocking_io", "critical",
            quantile(0.99, "fastapi_doctor_eventloop_lag_seconds", sel(a), w, "job", "instance")
            + f" > {t.loop_block_seconds:g}\nand on (job, instance)\n"
            # ... and blocking calls make most of the blocked time (not a large serialisation or a GC pause).
            + _blocking_io_share(cfg) + " >= 0.5",
            "The event loop of {{ $labels.instance }} lags",
            _where() + ": p99 event-loop lag is {{ $value | humanizeDuration }} over the last " + w
            + f" (a blocked episode is {_ms(t.loop_block_seconds)}); the blocked-time panel names the route.",
        ),
        Alert(
            "FastAPIDoctorThreadpoolSaturated", "blocking_io", "warning",
            f"avg by (job, instance) (avg_over_time(fastapi_doctor_threadpool_waiting{sel(a)}[{w}])) > 0\n"
            f"and\navg by (job, instance) (avg_over_time(fastapi_doctor_threadpool_busy{sel(a)}[{w}]))\n"
            f"  / max by (job, instance) (fastapi_doctor_threadpool_limit{sel(a)}) >= {t.pool_saturation:g}",
            "The threadpool of {{ $labels.instance }} is saturated",
            _where() + ": {{ $value | humanize }} tasks wait on average for a threadpool thread over the last "
            + w + f" while at least {t.pool_saturation:.0%} of its threads are busy; sync endpoints and "
            "dependencies queue behind blocking calls.",
        ),
        _findings(cfg, "blocking_io", "FastAPIDoctorBlockingIOFinding", "a blocking call in async code"),
    ]


def dependency_rebuild(cfg: Config) -> list[Alert]:
    # Only the agent's findings: a slow dependency is not evidence of a rebuild (the dependency time
    # panel shows it; the rule that sees the object built per request decides).
    return [
        _findings(cfg, "dependency_rebuild", "FastAPIDoctorDependencyRebuildFinding", "a dependency rebuilt per request"),
    ]


def pool_leak(cfg: Config) -> list[Alert]:
    t, w, a = cfg.thresholds, cfg.window, cfg.alert_selector
    pool = ("job", "instance", "db_client_connection_pool_name")
    by_pool = "by (" + ", ".join(pool) + ")"
    return [
        Alert(
            "FastAPIDoctorPoolSaturated", "pool_leak", "warning",
            f"sum {by_pool} (avg_over_time(db_client_connection_count"
            + sel(a, 'db_client_connection_state="used"') + f"[{w}]))\n"
            f"  / max {by_pool} (db_client_connection_max{sel(a)}) >= {t.pool_saturation:g}",
            "Connection pool {{ $labels.db_client_connection_pool_name }} is nearly exhausted",
            _where() + ": {{ $value | humanizePercentage }} of the connections of pool "
            "{{ $labels.db_client_connection_pool_name }} were checked out on average over the last " + w
            + f" (threshold {t.pool_saturation:.0%}); connections are leaked or held too long.",
        ),
        Alert(
            "FastAPIDoctorPoolTimeouts", "pool_leak", "critical",
            f"sum {by_pool} (rate(db_client_connection_timeouts_total{sel(a)}[{w}])) > 0",
            "Requests time out waiting for pool {{ $labels.db_client_connection_pool_name }}",
            _where() + ': {{ printf "%.2f" $value }} checkouts per second time out on pool '
            "{{ $labels.db_client_connection_pool_name }} over the last " + w + "; requests fail with pool timeouts.",
        ),
        Alert(
            "FastAPIDoctorConnectionsHeldTooLong", "pool_leak", "warning",
            mean("db_client_connection_use_time_seconds", sel(a), w, *pool) + f" > {t.leak_seconds:g}",
            "Connections of pool {{ $labels.db_client_connection_pool_name }} are held too long",
            _where() + ": connections of pool {{ $labels.db_client_connection_pool_name }} are held "
            "{{ $value | humanizeDuration }} on average over the last " + w
            + f" (a leak is {t.leak_seconds:g}s).",
        ),
        _findings(cfg, "pool_leak", "FastAPIDoctorPoolLeakFinding", "a leaked or long-held connection"),
    ]


def slow_middleware(cfg: Config) -> list[Alert]:
    t, w, a = cfg.thresholds, cfg.window, cfg.alert_selector
    return [
        Alert(
            "FastAPIDoctorSlowMiddleware", "slow_middleware", "warning",
            quantile(0.5, "fastapi_doctor_middleware_duration_seconds", sel(a), w, "job", "instance", "fastapi_doctor_middleware")
            + f" > {t.slow_middleware_seconds:g}" + _loop_healthy(cfg),
            "Middleware {{ $labels.fastapi_doctor_middleware }} is slow",
            _where() + ": middleware {{ $labels.fastapi_doctor_middleware }} spends {{ $value | humanizeDuration }} "
            "of its own time per request at p50 over the last " + w
            + f" (threshold {_ms(t.slow_middleware_seconds)}); every route pays it.",
        ),
        _findings(cfg, "slow_middleware", "FastAPIDoctorSlowMiddlewareFinding", "a slow middleware"),
    ]


def large_payload(cfg: Config) -> list[Alert]:
    t, w, a = cfg.thresholds, cfg.window, cfg.alert_selector
    uncompressed = sel(a, 'http_response_header_content_encoding=~"|identity"')
    return [
        Alert(
            "FastAPIDoctorLargeUncompressedResponses", "large_payload", "warning",
            mean("http_server_response_body_size_bytes", uncompressed, w, "job", "instance", "http_route")
            + f" > {t.large_response_bytes:g}",
            "{{ $labels.http_route }} sends large uncompressed responses",
            _where() + ": responses of {{ $labels.http_route }} are {{ $value | humanize1024 }}B on average, "
            "sent without compression, over the last " + w
            + f" (threshold {t.large_response_bytes // 1024}KiB).",
        ),
        _findings(cfg, "large_payload", "FastAPIDoctorLargePayloadFinding", "a large uncompressed response"),
    ]


def n_plus_one(cfg: Config) -> list[Alert]:
    t, w, a = cfg.thresholds, cfg.window, cfg.alert_selector
    return [
        Alert(
            "FastAPIDoctorNPlusOneQueries", "n_plus_one", "warning",
            mean("fastapi_doctor_db_statements", sel(a), w, "job", "instance", "http_route")
            + f" >= {t.n_plus_one_statements:g}",
            "{{ $labels.http_route }} runs a query per row",
            _where() + ": requests to {{ $labels.http_route }} run {{ $value | humanize }} SQL statements each "
            "on average over the last " + w + f" (an N+1 is {t.n_plus_one_statements} executions of one statement).",
        ),
        _findings(cfg, "n_plus_one", "FastAPIDoctorNPlusOneFinding", "an N+1 query pattern"),
    ]


TASK_CREATOR = ("fastapi_doctor_asyncio_coroutine", "code_file_path", "code_line_number")


def task_leak(cfg: Config) -> list[Alert]:
    t, w, a = cfg.thresholds, cfg.window, cfg.alert_selector
    by = ", ".join(("job", "instance", *TASK_CREATOR))
    return [
        Alert(
            "FastAPIDoctorTasksPilingUp", "task_leak", "warning",
            f"sum by ({by}) (delta(fastapi_doctor_asyncio_tasks_alive{sel(a)}[{w}])) > 0\n"
            f"and on ({by})\n"
            f"max by ({by}) (fastapi_doctor_asyncio_tasks_oldest_age_seconds{sel(a)}) > {t.task_leak_seconds:g}",
            "Tasks running {{ $labels.fastapi_doctor_asyncio_coroutine }} pile up",
            _where() + ": {{ $value | humanize }} more tasks running {{ $labels.fastapi_doctor_asyncio_coroutine }} "
            "(created at {{ $labels.code_file_path }}:{{ $labels.code_line_number }}) are pending after their "
            "request than " + w + f" ago, the oldest past {t.task_leak_seconds:g}s.",
        ),
        _findings(cfg, "task_leak", "FastAPIDoctorTaskLeakFinding", "tasks that outlive their request"),
    ]


# The root causes with alerts on their signals; every other root cause of the agent's registry gets
# the alert on its findings alone (findings_alert).
BUILDERS = {
    "blocking_io": blocking_io,
    "dependency_rebuild": dependency_rebuild,
    "pool_leak": pool_leak,
    "slow_middleware": slow_middleware,
    "large_payload": large_payload,
    "n_plus_one": n_plus_one,
    "task_leak": task_leak,
}
assert set(BUILDERS) <= set(ROOT_CAUSES), set(BUILDERS) - set(ROOT_CAUSES)


def findings_alert_name(root_cause: str) -> str:
    return "FastAPIDoctor" + "".join(word.capitalize() for word in root_cause.split("_")) + "Finding"


def findings_alert(cfg: Config, root_cause: str) -> Alert:
    """The alert of a root cause that has no builder: its findings, described by its title."""
    return _findings(cfg, root_cause, findings_alert_name(root_cause), phrase(root_cause))


def of(cfg: Config, root_cause: str) -> list[Alert]:
    builder = BUILDERS.get(root_cause)
    return builder(cfg) if builder is not None else [findings_alert(cfg, root_cause)]


def alerts(cfg: Config) -> list[Alert]:
    return [alert for root_cause in ROOT_CAUSES for alert in of(cfg, root_cause)]


def add_runbook_links(groups: list[dict[str, Any]], cfg: Config) -> list[dict[str, Any]]:
    """The one pass that gives every alert its ``runbook_url``, from its ``root_cause`` label."""
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["annotations"]["runbook_url"] = cfg.runbook_url(rule["labels"]["root_cause"])
    return groups


def rule_groups(cfg: Config) -> dict[str, Any]:
    groups = [
        {"name": f"fastapi-doctor.{root_cause}", "rules": [a.rule(cfg) for a in of(cfg, root_cause)]}
        for root_cause in ROOT_CAUSES
    ]
    return {"groups": add_runbook_links(groups, cfg)}
