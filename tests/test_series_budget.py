"""The series budget (issue 22): what one route costs in Prometheus series, read from the side server's
``/metrics`` as Prometheus scrapes it, against the budget docs/metrics.md ("Series budget") documents.

A real uvicorn process of tests/apps/many_routes_app.py under the wrapper: 200 routes on 20 routers,
each route with four dependencies (the bearer scheme, the user, the session, the pagination), one
query per request, gzip; every route requested once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
from apps.fullstack_security import create_access_token
from harness import wait_until
from prometheus_client.parser import text_string_to_metric_families

HEADERS = {"authorization": f"Bearer {create_access_token(1)}"}
ROUTES = 200
DEPENDENCIES = 4  # per route of the app

# docs/metrics.md, "Series budget": series per route, and per dependency of a route.
PER_ROUTE = 37
PER_ROUTE_DEPENDENCY = 11


def series_with_route(text: str) -> Counter[str]:
    """Series (samples) of the app's routes (``http_route`` under /api/v1/), by metric family."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("http_route", "").startswith("/api/v1/"):
                counts[family.name] += 1
    return counts


def test_every_route_hit_stays_within_the_documented_series_budget(serve: Any) -> None:
    app = serve("many_routes_app:app", ready_path="/health",
                env={"MANY_ROUTES": str(ROUTES), "OTEL_TRACES_SAMPLER_ARG": "0"})
    urls = [f"/api/v1/kind{k}/7/view{n}" for k in range(20) for n in range(ROUTES // 20)]  # one per route
    with httpx.Client(headers=HEADERS, timeout=30) as client:
        for path in urls:
            response = client.get(app.url + path)
            assert response.status_code == 200, (path, response.text[:200])

    def every_route_counted() -> str | None:
        text = app.metrics_text()
        routes = {s.labels.get("http_route", "") for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name == "http_server_request_duration_seconds_count"}
        return text if len({r for r in routes if r.startswith("/api/v1/")}) == ROUTES else None

    counts = series_with_route(wait_until(every_route_counted, timeout=20, interval=0.3))
    per_route = {name: n / ROUTES for name, n in counts.items()}
    print("series per route:", sorted(per_route.items(), key=lambda kv: -kv[1]))
    budget = PER_ROUTE + DEPENDENCIES * PER_ROUTE_DEPENDENCY
    assert sum(per_route.values()) <= budget, per_route
    assert per_route.get("fastapi_doctor_dependency_duration_seconds", 0) <= DEPENDENCIES * PER_ROUTE_DEPENDENCY
