"""What the demo does to the patient and what the agent must conclude: one scenario per root cause.

Each scenario loads a sick route and its healthy twin at the same time; the agent must name the root
cause on the sick route and report nothing on the twin.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    # Functions of the patient a finding may name as its location (the buggy code, or its caller).
    culprits: tuple[str, ...] = ()
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


def _cycle(template: str, values: range | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(template.format(v) for v in values)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        root_cause="blocking_io",
        route="/quotes/{symbol}",
        sick_paths=_cycle("/quotes/{}", ("ACME", "GLOBEX", "INITECH", "UMBRELLA")),
        healthy_route="/v2/quotes/{symbol}",
        healthy_paths=_cycle("/v2/quotes/{}", ("ACME", "GLOBEX", "INITECH", "UMBRELLA")),
        bug="urllib.request.urlopen (a synchronous HTTP client) inside an async def route",
        fix="await an async client created once (httpx.AsyncClient in the lifespan), or move the call to a "
        "thread with await anyio.to_thread.run_sync(...)",
        detectors=("eventloop",),
        culprits=("fetch_quote_blocking", "quote"),
        note="the healthy twin is slow too: while the loop is blocked, every request on it waits",
        requests=16,
        quick_requests=10,
        concurrency=4,
    ),
    Scenario(
        root_cause="dependency_rebuild",
        route="/orders/recent",
        sick_paths=("/orders/recent",),
        healthy_route="/v2/orders/recent",
        healthy_paths=("/v2/orders/recent",),
        bug="the get_session_new_engine dependency calls create_async_engine (a new pool) on every request",
        fix="create the engine once in the lifespan and yield sessions from its sessionmaker",
        detectors=("dependencies", "db"),
        culprits=("get_session_new_engine",),
    ),
    Scenario(
        root_cause="n_plus_one",
        route="/customers/{customer_id}/orders",
        sick_paths=_cycle("/customers/{}/orders", range(1, 9)),
        healthy_route="/v2/customers/{customer_id}/orders",
        healthy_paths=_cycle("/v2/customers/{}/orders", range(1, 9)),
        bug="one SELECT of order lines per order, in a loop",
        fix="load the lines with the orders: selectinload(Order.lines), or one IN query",
        detectors=("db",),
        culprits=("orders_with_lines_n_plus_one",),
    ),
    Scenario(
        root_cause="large_payload",
        route="/products/export",
        sick_paths=("/products/export",),
        healthy_route="/v2/products",
        healthy_paths=_cycle("/v2/products?page={}", range(1, 9)),
        bug="the whole catalogue (~800 kB of JSON) in one uncompressed response",
        fix="paginate (/v2/products?page=N), and add GZipMiddleware(minimum_size=1000) for what stays large",
        detectors=("responses", "eventloop"),
        culprits=("export", "export_all"),
        requests=30,
        quick_requests=20,
        concurrency=4,
    ),
    Scenario(
        root_cause="slow_middleware",
        route=None,
        sick_paths=_cycle("/products/{}", range(1, 9)),
        healthy_route=None,
        healthy_paths=(),
        bug="AuditLogMiddleware waits for the audit store on every request, before the route runs",
        fix="keep middleware light: send audit records from a background task or a queue; prefer pure ASGI "
        "middleware to BaseHTTPMiddleware (compare RequestIdMiddleware, which is not flagged)",
        detectors=("middleware", "eventloop"),
        culprits=("AuditLogMiddleware.dispatch", "AuditStore.write"),
        twin="RequestIdMiddleware (pure ASGI) on the same requests",
    ),
    Scenario(
        root_cause="pool_leak",
        route="/carts/{user_id}",
        sick_paths=_cycle("/carts/{}", range(1, 4)),
        healthy_route="/v2/carts/{user_id}",
        healthy_paths=_cycle("/v2/carts/{}", range(1, 4)),
        bug="open_cart parks its AsyncSession until the user's next visit: the connection stays checked out",
        fix="async with sessions() as session: ... (or a dependency that yields inside async with)",
        detectors=("db",),
        culprits=("open_cart", "_cart_of"),
        requests=24,
        quick_requests=12,
        wait_s=12.0,
    ),
    Scenario(
        root_cause="task_leak",
        route="/products/{product_id}/page",
        sick_paths=_cycle("/products/{}/page", range(1, 9)),
        healthy_route="/v2/products/{product_id}/page",
        healthy_paths=_cycle("/v2/products/{}/page", range(1, 9)),
        bug="track_view starts a task per page view that waits for the next analytics flush (every 10 min)",
        fix="hand the view to a bounded queue drained by a worker started in the lifespan (enqueue_view)",
        detectors=("tasks",),
        culprits=("Analytics.track_view",),
    ),
)

BY_ROOT_CAUSE = {s.root_cause: s for s in SCENARIOS}

