"""The request log: one record for a request that failed (5xx or no response), was slow, or raised a
finding; every request with ``FASTAPI_DOCTOR_LOG_REQUESTS=all``.

A record holds the method, the route template (never the raw path or query string), the status,
the duration, the response bytes, the root causes of the findings raised during the request and the
ids of the request's span when it was sampled (``null`` otherwise: an unsampled request has no
trace). Never a body, a header value or a query-string value.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.trace import get_current_span

from fastapi_doctor.context import RequestState


class RequestLog:
    def __init__(self, writer: Any, settings: Any) -> None:
        self._writer = writer
        self._all = settings.log_requests == "all"
        self._slow_s = settings.slow_request_ms / 1000.0

    def finished(self, state: RequestState) -> None:
        """The per-request hook. The default path (fast, successful, no finding) is a few comparisons."""
        status = state.status
        if (
            not self._all
            and state.root_causes is None
            and state.duration < self._slow_s
            and status is not None
            and status < 500
        ):
            return
        self._write(state, status)

    def _write(self, state: RequestState, status: int | None) -> None:
        reasons = []
        failed = status is None or status >= 500
        if failed:
            reasons.append("error")
        if state.duration >= self._slow_s:
            reasons.append("slow")
        root_causes = list(state.root_causes or ())
        if root_causes:
            reasons.append("finding")
        if not reasons:
            reasons.append("all")
        # The request's server span: kept by the middleware for sampled requests (else the current
        # one: the hook runs inside FastAPI's request span). Unsampled requests have none.
        span = getattr(state, "span", None) or get_current_span()
        ctx = span.get_span_context()
        sampled = ctx.is_valid and bool(ctx.trace_flags & 1)
        fields = {
            "kind": "request",
            "reasons": reasons,
            "method": state.method,
            "route": state.route,
            "status": status,
            "duration_ms": round(state.duration * 1000.0, 1),
            "response_bytes": state.body_bytes,
            "root_causes": root_causes,
            "trace_id": "%032x" % ctx.trace_id if sampled else None,
            "span_id": "%016x" % ctx.span_id if sampled else None,
        }
        level = logging.ERROR if failed else logging.INFO if reasons == ["all"] else logging.WARNING
        key = (state.method, state.route, status, tuple(reasons), tuple(root_causes))
        self._writer.write("request", level, key, fields)
