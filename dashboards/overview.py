"""The ``fastapi-doctor overview`` dashboard, built with grafana-foundation-sdk.

A row per root cause with the signals that show it, the request rows (stable HTTP semantic-convention
names), the findings, and the process. Every panel has a unit and queries the ``$datasource``
variable; thresholds are the agent's defaults; latency panels ask for exemplars.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, units
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.config import ROOT_CAUSES, TITLES, Config, phrase
from dashboards.promql import quantile, sel

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# A finding's identity and location on fastapi_doctor_finding_info (agent/fastapi_doctor/publish/findings_export.py).
FINDING_LABELS = ("finding_id, root_cause, http_request_method, http_route, code_file_path, code_line_number, "
                  "code_function_name")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    exemplar: bool = False


@dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str
    threshold: float | None = None
    kind: str = "timeseries"  # or "table" (instant query over the dashboard's range)
    width: int = 12
    # The scenario in which the panel must show data, when not its row's ("pathology": any of them).
    meant_for: str | None = None
    # A table of several queries: their rows merged on their common labels, columns (field, title) in
    # this order (a query's value is "Value #<refId>"), sorted by the column titled ``sort_by``.
    columns: tuple[tuple[str, str], ...] = ()
    sort_by: str | None = None
    # (field, URL with ${__value.raw}): each cell of the field links there (a runbook).
    link: tuple[str, str] | None = None


@dataclass(frozen=True)
class RowSpec:
    title: str
    # The scenario in which every panel of the row must show data (a root cause, or "healthy").
    meant_for: str
    panels: tuple[PanelSpec, ...] = field(default_factory=tuple)


def _or_zero(expr: str, zero_on: str) -> str:
    """``expr``, or 0 for each series of ``zero_on``: a counter that has not moved yet reads 0, not no data."""
    return f"(({expr})\nor\n0 * ({zero_on}))"


def rows(cfg: Config) -> list[RowSpec]:
    """The rows written below, and a row of its findings for each root cause of the agent's registry
    that has none (a new rule module), before the process row."""
    written = _rows(cfg)
    covered = {row.meant_for for row in written}
    added = [_findings_row(cfg, rc) for rc in ROOT_CAUSES if rc not in covered]
    return [*written[:-1], *added, written[-1]]


def _findings_row(cfg: Config, root_cause: str) -> RowSpec:
    """A root cause without panels of its own: its findings per route."""
    of_root_cause = sel(cfg.dashboard_selector, f'root_cause="{root_cause}"')
    return RowSpec(f"{root_cause}: {phrase(root_cause)}", root_cause, (
        PanelSpec(
            "Findings per route: " + TITLES[root_cause], units.Short,
            (Query(f"sum by (http_route) (increase(fastapi_doctor_findings_total{of_root_cause}[{RATE}]))",
                   "{{http_route}}"),),
            f"Occurrences of {root_cause} findings reported by the agent; /doctor has the evidence and the line.",
            width=24,
        ),
    ))


def _rows(cfg: Config) -> list[RowSpec]:
    t = cfg.thresholds
    d = cfg.dashboard_selector
    r = cfg.route_selector
    dr = sel(d, r)
    requests_by = f"sum by (job, instance) (rate(http_server_request_duration_seconds_count{sel(d)}[{RATE}]))"
    return [
        RowSpec("Requests", "healthy", (
            PanelSpec(
                "Request rate by route", units.RequestsPerSecond,
                (Query(f"sum by (http_route) (rate(http_server_request_duration_seconds_count{dr}[{RATE}]))",
                       "{{http_route}}"),),
                "Requests per second by route template (http.server.request.duration count).",
                width=8,
            ),
            PanelSpec(
                "Error ratio (5xx) by route", units.PercentUnit,
                (Query(_or_zero(
                    f"sum by (http_route) (rate(http_server_request_duration_seconds_count"
                    + sel(d, r, 'http_response_status_code=~"5.."') + f"[{RATE}]))",
                    f"sum by (http_route) (rate(http_server_request_duration_seconds_count{dr}[{RATE}]))",
                ) + f"\n/\nsum by (http_route) (rate(http_server_request_duration_seconds_count{dr}[{RATE}]))",
                       "{{http_route}}"),),
                "Share of requests answered with a 5xx status, by route.",
                width=8,
            ),
            PanelSpec(
                "Request duration p50 / p99", units.Seconds,
                (Query(quantile(0.5, "http_server_request_duration_seconds", dr, RATE, "http_route"),
                       "p50 {{http_route}}", exemplar=True),
                 Query(quantile(0.99, "http_server_request_duration_seconds", dr, RATE, "http_route"),
                       "p99 {{http_route}}", exemplar=True)),
                "Request duration quantiles by route; the red line is FASTAPI_DOCTOR_SLOW_REQUEST_MS.",
                threshold=t.slow_request_seconds, width=8,
            ),
            PanelSpec(
                "Findings: location, replicas, rate", units.Short,
                (Query(f"count by ({FINDING_LABELS}) (fastapi_doctor_finding_info{dr})", "replicas"),
                 Query(f"sum by (finding_id) (increase(fastapi_doctor_findings_total{dr}[$__range]))", "occurrences"),
                 Query(f"sum by (finding_id) (rate(fastapi_doctor_findings_total{dr}[{RATE}]))", "rate")),
                "Each finding once across the fleet, with its line of code (fastapi_doctor_finding_info), the "
                "instances (workers, replicas) that hold it, its occurrences over the dashboard's time range and "
                "its rate now (fastapi_doctor_findings_total, joined by finding_id). The root cause links to its "
                "runbook; `fastapi-doctor report --prometheus` prints the same table.",
                kind="table", width=24, meant_for="pathology",
                columns=(("root_cause", "Root cause"), ("http_request_method", "Method"), ("http_route", "Route"),
                         ("code_file_path", "File"), ("code_line_number", "Line"), ("code_function_name", "Function"),
                         ("Value #A", "Replicas"), ("Value #B", "Occurrences"), ("Value #C", "Rate /s"),
                         ("finding_id", "Finding")),
                sort_by="Rate /s",
                link=("root_cause", cfg.runbook_url("${__value.raw}")),
            ),
        )),
        RowSpec("blocking_io: blocking calls in async code", "blocking_io", (
            PanelSpec(
                "Event-loop lag p50 / p99", units.Seconds,
                (Query(quantile(0.5, "fastapi_doctor_eventloop_lag_seconds", sel(d), RATE, "instance"),
                       "p50 {{instance}}", exemplar=True),
                 Query(quantile(0.99, "fastapi_doctor_eventloop_lag_seconds", sel(d), RATE, "instance"),
                       "p99 {{instance}}", exemplar=True)),
                "How late the loop's heartbeat ticks; the red line is FASTAPI_DOCTOR_LOOP_BLOCK_MS.",
                threshold=t.loop_block_seconds, width=8,
            ),
            PanelSpec(
                "Event loop blocked, share of time by route", units.PercentUnit,
                (Query(f"sum by (http_route) (rate(fastapi_doctor_eventloop_blocked_time_seconds_total{dr}[{RATE}]))",
                       "{{http_route}}"),),
                "Seconds per second the loop was blocked, attributed to the route whose code blocked it.",
                threshold=t.blocked_share, width=8,
            ),
            PanelSpec(
                "Threadpool busy / limit / waiting", units.Short,
                (Query(f"sum by (instance) (fastapi_doctor_threadpool_busy{sel(d)})", "busy {{instance}}"),
                 Query(f"sum by (instance) (fastapi_doctor_threadpool_limit{sel(d)})", "limit {{instance}}"),
                 Query(f"sum by (instance) (fastapi_doctor_threadpool_waiting{sel(d)})", "waiting {{instance}}")),
                "AnyIO threadpool of sync endpoints and dependencies: threads busy, the limit, tasks waiting.",
                width=8,
            ),
        )),
        RowSpec("dependency_rebuild: dependencies rebuilt per request", "dependency_rebuild", (
            PanelSpec(
                "Dependency time p50 by dependency", units.Seconds,
                (Query(quantile(0.5, "fastapi_doctor_dependency_duration_seconds", dr, RATE,
                                "fastapi_doctor_dependency", "http_route"),
                       "{{fastapi_doctor_dependency}} {{http_route}}", exemplar=True),),
                "Time to build each Depends() callable; the red line is FASTAPI_DOCTOR_SLOW_DEPENDENCY_MS.",
                threshold=t.slow_dependency_seconds,
            ),
            PanelSpec(
                "Dependency calls by dependency", units.OpsPerSecond,
                (Query(f"sum by (fastapi_doctor_dependency) (rate(fastapi_doctor_dependency_duration_seconds_count{dr}[{RATE}]))",
                       "{{fastapi_doctor_dependency}}"),),
                "How often each dependency is built: once per request unless cached.",
            ),
        )),
        RowSpec("pool_leak: connection leaks and pool sizing", "pool_leak", (
            PanelSpec(
                "Pool connections: used / idle / max / overflow", units.Short,
                (Query(f"sum by (db_client_connection_pool_name, db_client_connection_state) "
                       f"(db_client_connection_count{sel(d)})",
                       "{{db_client_connection_state}} {{db_client_connection_pool_name}}"),
                 Query(f"max by (db_client_connection_pool_name) (db_client_connection_max{sel(d)})",
                       "max {{db_client_connection_pool_name}}"),
                 Query(f"max by (db_client_connection_pool_name) (db_client_connection_idle_max{sel(d)})",
                       "idle max {{db_client_connection_pool_name}}"),
                 Query(f"sum by (db_client_connection_pool_name) (fastapi_doctor_db_pool_overflow{sel(d)})",
                       "overflow {{db_client_connection_pool_name}}")),
                "SQLAlchemy pool: connections checked out (used) and idle, against the maximum; overflow beyond pool_size.",
                width=8,
            ),
            PanelSpec(
                "Pool wait p99 and pending checkouts", units.Seconds,
                (Query(quantile(0.99, "db_client_connection_wait_time_seconds", sel(d), RATE,
                                "db_client_connection_pool_name"),
                       "wait p99 {{db_client_connection_pool_name}}", exemplar=True),),
                "Time a checkout waits for a connection.",
                width=8,
            ),
            PanelSpec(
                "Pool timeouts and pending requests", units.Short,
                (Query(_or_zero(
                    f"sum by (db_client_connection_pool_name) (rate(db_client_connection_timeouts_total{sel(d)}[{RATE}]))",
                    f"max by (db_client_connection_pool_name) (db_client_connection_max{sel(d)})"),
                       "timeouts/s {{db_client_connection_pool_name}}"),
                 Query(f"sum by (db_client_connection_pool_name) (db_client_connection_pending_requests{sel(d)})",
                       "pending {{db_client_connection_pool_name}}")),
                "Checkouts that timed out per second, and checkouts waiting now.",
                width=8,
            ),
            PanelSpec(
                "Connection use time p99", units.Seconds,
                (Query(quantile(0.99, "db_client_connection_use_time_seconds", sel(d), RATE,
                                "db_client_connection_pool_name"),
                       "p99 {{db_client_connection_pool_name}}", exemplar=True),),
                "How long connections stay checked out; the red line is FASTAPI_DOCTOR_LEAK_SECONDS.",
                threshold=t.leak_seconds,
            ),
            PanelSpec(
                "Connection create time p99", units.Seconds,
                (Query(quantile(0.99, "db_client_connection_create_time_seconds", sel(d), RATE,
                                "db_client_connection_pool_name"),
                       "p99 {{db_client_connection_pool_name}}", exemplar=True),),
                "Time to open a new database connection (the pool was empty or overflowing).",
            ),
        )),
        RowSpec("slow_middleware: heavy middleware", "slow_middleware", (
            PanelSpec(
                "Middleware self-time p50 by layer", units.Seconds,
                (Query(quantile(0.5, "fastapi_doctor_middleware_duration_seconds", sel(d), RATE, "fastapi_doctor_middleware"),
                       "{{fastapi_doctor_middleware}}", exemplar=True),),
                "Time spent in each middleware layer itself, not in the layers inside it; the red line is "
                "FASTAPI_DOCTOR_SLOW_MIDDLEWARE_MS.",
                threshold=t.slow_middleware_seconds, width=24,
            ),
        )),
        RowSpec("large_payload: large uncompressed responses", "large_payload", (
            PanelSpec(
                "Response size by route and encoding (mean)", units.BytesIEC,
                (Query(f"sum by (http_route, http_response_header_content_encoding) "
                       f"(rate(http_server_response_body_size_bytes_sum{dr}[{RATE}]))\n/\n"
                       f"sum by (http_route, http_response_header_content_encoding) "
                       f"(rate(http_server_response_body_size_bytes_count{dr}[{RATE}]))",
                       "{{http_route}} {{http_response_header_content_encoding}}"),),
                "Bytes sent per response; an empty encoding is uncompressed. The red line is "
                "FASTAPI_DOCTOR_LARGE_RESPONSE_BYTES.",
                threshold=t.large_response_bytes, width=8,
            ),
            PanelSpec(
                "Size before compression (mean)", units.BytesIEC,
                (Query(_or_zero(
                    f"sum by (http_route) (rate(fastapi_doctor_response_body_uncompressed_size_bytes_sum{dr}[{RATE}]))\n/\n"
                    f"sum by (http_route) (rate(fastapi_doctor_response_body_uncompressed_size_bytes_count{dr}[{RATE}]))",
                    f"sum by (http_route) (rate(http_server_response_body_size_bytes_count{dr}[{RATE}]))"),
                       "{{http_route}}"),),
                "Body size before a compression middleware (0 where the app compresses nothing).",
                threshold=t.large_response_bytes, width=8,
            ),
            PanelSpec(
                "Serialisation time p99 by route", units.Seconds,
                (Query(quantile(0.99, "fastapi_doctor_response_serialize_duration_seconds", dr, RATE, "http_route"),
                       "{{http_route}}", exemplar=True),),
                "Time to serialise the response body; it runs on the event loop, so the red line is "
                "FASTAPI_DOCTOR_LOOP_BLOCK_MS.",
                threshold=t.loop_block_seconds, width=8,
            ),
        )),
        RowSpec("n_plus_one: one query per row", "n_plus_one", (
            PanelSpec(
                "SQL statements per request by route (mean)", units.Short,
                (Query(f"sum by (http_route) (rate(fastapi_doctor_db_statements_sum{dr}[{RATE}]))\n/\n"
                       f"sum by (http_route) (rate(fastapi_doctor_db_statements_count{dr}[{RATE}]))",
                       "{{http_route}}"),),
                "Statements each request runs; the red line is FASTAPI_DOCTOR_N_PLUS_ONE_THRESHOLD.",
                threshold=t.n_plus_one_statements,
            ),
            PanelSpec(
                "SQL statements per second by route", units.OpsPerSecond,
                (Query(f"sum by (http_route) (rate(fastapi_doctor_db_statements_sum{dr}[{RATE}]))",
                       "{{http_route}}"),),
                "Load the route puts on the database.",
            ),
        )),
        RowSpec("task_leak: tasks that outlive their request", "task_leak", (
            PanelSpec(
                "Tasks pending after their request, by creator", units.Short,
                (Query(f"sum by (fastapi_doctor_asyncio_coroutine, code_file_path, code_line_number) "
                       f"(fastapi_doctor_asyncio_tasks_alive{sel(d)})",
                       "{{fastapi_doctor_asyncio_coroutine}} ({{code_file_path}}:{{code_line_number}})"),),
                "Tasks of the app's code still pending after the request that created them (or started outside "
                "any request, such as workers); a line that climbs with traffic is a leak.",
            ),
            PanelSpec(
                "Tasks outliving their request, and lost while pending, per second", units.OpsPerSecond,
                (Query(f"sum by (fastapi_doctor_asyncio_coroutine) "
                       f"(rate(fastapi_doctor_asyncio_tasks_leaked_total{sel(d)}[{RATE}]))",
                       "outlived {{fastapi_doctor_asyncio_coroutine}}"),
                 Query(f"sum by (fastapi_doctor_asyncio_coroutine) "
                       f"(rate(fastapi_doctor_asyncio_tasks_destroyed_pending_total{sel(d)}[{RATE}]))",
                       "destroyed pending {{fastapi_doctor_asyncio_coroutine}}")),
                "Tasks still pending when their request finished, and pending tasks the garbage collector "
                "destroyed because nothing kept a reference.",
            ),
        )),
        RowSpec("Process and agent", "healthy", (
            PanelSpec(
                "CPU utilisation", units.PercentUnit,
                (Query(f"sum by (instance) (process_cpu_utilization{sel(d)})", "{{instance}}"),),
                "Share of one CPU the process used (process.cpu.utilization).",
                width=8,
            ),
            PanelSpec(
                "Memory (RSS)", units.BytesIEC,
                (Query(f"sum by (instance) (process_memory_usage_bytes{sel(d)})", "{{instance}}"),),
                "Resident memory of the process (process.memory.usage).",
                width=8,
            ),
            PanelSpec(
                "GC pause p99 by generation", units.Seconds,
                (Query(quantile(0.99, "fastapi_doctor_gc_pause_seconds", sel(d), RATE, "cpython_gc_generation"),
                       "gen {{cpython_gc_generation}}", exemplar=True),),
                "Garbage-collector pauses; they stop the event loop like a blocking call.",
                threshold=t.loop_block_seconds, width=8,
            ),
            PanelSpec(
                "Threads and open files", units.Short,
                (Query(f"sum by (instance) (process_thread_count{sel(d)})", "threads {{instance}}"),
                 Query(f"sum by (instance) (process_unix_file_descriptor_count{sel(d)})", "fds {{instance}}")),
                "Threads and open file descriptors of the process.",
            ),
            PanelSpec(
                "Agent: internal errors, dropped exports, suppressed logs", units.OpsPerSecond,
                (Query(_or_zero(f"sum by (job, instance) (rate(fastapi_doctor_internal_errors_total{sel(d)}[{RATE}]))",
                                requests_by), "internal errors {{instance}}"),
                 Query(_or_zero(f"sum by (job, instance) (rate(fastapi_doctor_export_dropped_total{sel(d)}[{RATE}]))",
                                requests_by), "dropped {{instance}}"),
                 Query(_or_zero(f"sum by (job, instance) (rate(fastapi_doctor_logs_suppressed_total{sel(d)}[{RATE}]))",
                                requests_by), "logs suppressed {{instance}}")),
                "The agent's own health: exceptions it caught (the app was not affected), telemetry it dropped, "
                "log records it held back.",
            ),
        )),
    ]


def _variables(cfg: Config) -> list[Any]:
    metric = cfg.variable_metric

    def query_var(name: str, label: str, query: str) -> Any:
        return (
            dash.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
        )

    return [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        query_var("job", "Service (job)", f"label_values({metric}, job)"),
        query_var("instance", "Instance", f'label_values({metric}{{job=~"$job"}}, instance)'),
        query_var("route", "Route", f'label_values({metric}{{job=~"$job", instance=~"$instance"}}, http_route)'),
    ]


def _panel(spec: PanelSpec) -> Any:
    if spec.kind == "table":
        panel: Any = table.Panel()
    else:
        panel = (
            timeseries.Panel()
            .legend(common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM).show_legend(True))
            .fill_opacity(10)
        )
    panel = panel.title(spec.title).description(spec.description).datasource(DATASOURCE).unit(spec.unit)
    panel = panel.height(8).span(spec.width)
    steps = [Threshold(value=None, color="green")]
    if spec.threshold is not None:
        steps.append(Threshold(value=spec.threshold, color="red"))
        if spec.kind == "timeseries":
            panel = panel.thresholds_style(
                common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
    panel = panel.thresholds(dash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    if spec.columns:
        panel = _columns(panel, spec)
    for i, q in enumerate(spec.queries):
        target = prometheus.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i))
        target = target.datasource(DATASOURCE)
        if spec.kind == "table":
            target = target.instant().format(PromQueryFormat.TABLE)
        else:
            target = target.range()
        if q.exemplar:
            target = target.exemplar(True)
        panel = panel.with_target(target)
    return panel


def _columns(panel: Any, spec: PanelSpec) -> Any:
    """Several instant queries as one table: merged on their common labels, renamed, ordered, linked."""
    names = [name for name, _ in spec.columns]
    panel = panel.with_transformation(DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(DataTransformerConfig(id_val="organize", options={
        "excludeByName": {"Time": True},
        "indexByName": {name: i for i, name in enumerate(names)},
        "renameByName": dict(spec.columns),
    }))
    if spec.sort_by:
        panel = panel.sort_by([common_b.TableSortByFieldState().display_name(spec.sort_by).desc(True)])
    if spec.link:
        column, url = spec.link  # overrides match the field's name after the renaming
        panel = panel.override_by_name(dict(spec.columns).get(column, column), [DynamicConfigValue(id_val="links", value=[
            {"title": "runbook", "url": url, "targetBlank": True}])])
    return panel


def overview(cfg: Config) -> dict[str, Any]:
    builder = (
        dash.Dashboard(cfg.dashboard_title).uid(cfg.dashboard_uid).tags(list(cfg.dashboard_tags))
        .description("fastapi-doctor: the signals behind each root cause of a slow FastAPI service.")
        .editable().tooltip(DashboardCursorSync.CROSSHAIR).time("now-1h", "now").refresh(cfg.refresh)
        .timezone("browser")
    )
    for variable in _variables(cfg):
        builder = builder.with_variable(variable)
    for row in rows(cfg):
        builder = builder.with_row(dash.Row(row.title))
        for spec in row.panels:
            builder = builder.with_panel(_panel(spec))
    model = builder.build()
    model.schema_version = cfg.schema_version
    data: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    for number, panel in enumerate(data["panels"], start=1):
        panel["id"] = number
    data["annotations"] = {"list": [{
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
    }]}
    return data


def dashboards(cfg: Config) -> dict[str, dict[str, Any]]:
    """File name (without .json) -> dashboard model."""
    return {"fastapi-doctor-overview": overview(cfg)}
