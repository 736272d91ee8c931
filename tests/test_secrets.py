"""No secret leaves the process: a real app receives secrets in headers, cookies, query strings,
bodies, SQL (bound and inlined), database errors, exception messages and its database URL; then
everything the agent emitted (OTLP payloads at the receiver with every request sampled, /metrics,
/doctor, the doctor page, the logs) is searched and none is found."""

from __future__ import annotations

import json
import re
import uuid

import httpx
from harness import wait_until
from pg import PASSWORD

ROUTES = {"/search", "/login", "/db/literal", "/db/bound", "/db/error", "/fail", "/crash"}
# uvicorn (not the agent) prints the traceback of an unhandled exception, message included.
_UVICORN_TRACEBACK = re.compile(r"ERROR:\s+Exception in ASGI application\n.*?\nRuntimeError: failed for \S+\n", re.S)


def test_no_secret_in_anything_the_agent_emits(serve, otlp, postgres, pg_database):
    s = {name: f"{name}-{uuid.uuid4().hex}" for name in (
        "bearer", "cookie", "apikey", "query", "query404", "body", "literal", "bound", "dberror", "fail", "crash",
    )}
    app = serve(
        "rel_secrets:app",
        env={
            "DATABASE_URL": postgres.url(pg_database),
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            # Every log the agent can write, as much as it can write.
            "FASTAPI_DOCTOR_LOG_REQUESTS": "all",
            "FASTAPI_DOCTOR_LOG_FORMAT": "json",
            "FASTAPI_DOCTOR_SLOW_QUERY_MS": "0.001",
            "FASTAPI_DOCTOR_SLOW_REQUEST_MS": "0.001",
            "FASTAPI_DOCTOR_N_PLUS_ONE_THRESHOLD": "1",
        },
    )
    headers = {
        "Authorization": f"Bearer {s['bearer']}",
        "Cookie": f"session={s['cookie']}",
        "X-Api-Key": s["apikey"],
    }
    with httpx.Client(base_url=app.url, headers=headers, timeout=10) as client:
        r = client.get("/search", params={"token": s["query"], "page": 2})
        assert r.json() == {"page": 2, "token_length": len(s["query"]), "authorized": True}
        r = client.post("/login", json={"user": "ann", "password": s["body"]})
        assert r.json() == {"user_length": 3, "cookies": 1}
        assert client.get("/db/literal", params={"secret": s["literal"]}).json() == {"n": len(s["literal"])}
        assert client.get("/db/bound", params={"secret": s["bound"]}).json() == {"n": len(s["bound"])}
        assert client.get("/db/error", params={"secret": s["dberror"]}).status_code == 400
        assert client.get("/fail", params={"secret": s["fail"]}).status_code == 422
        assert client.get("/nowhere", params={"token": s["query404"]}).status_code == 404
        # Last: uvicorn closes the connection after an unhandled exception.
        assert client.get("/crash", params={"secret": s["crash"]}).status_code == 500

    # Everything arrived: a server span per route, the database spans, the request metrics.
    def server_routes():
        routes = {sp.attributes.get("http.route") for sp in otlp.spans() if sp.scope == "fastapi"}
        return ROUTES <= routes

    wait_until(server_routes, timeout=15)
    db_spans = wait_until(lambda: [sp for sp in otlp.spans() if "sqlalchemy" in sp.scope and _statement(sp)], timeout=15)
    wait_until(lambda: otlp.metric_points("http.server.request.duration"), timeout=15)

    # The redaction is what made them clean (not the absence of the attributes).
    search = next(sp for sp in otlp.spans() if sp.attributes.get("http.route") == "/search")
    assert search.attributes["url.query"] == "token=REDACTED&page=REDACTED"
    statements = {_statement(sp) for sp in db_spans}
    assert "SELECT length(?) AS n" in statements

    emitted = {
        "OTLP": otlp.raw_bytes(),
        "/metrics": app.metrics_text().encode(),
        "/doctor": json.dumps(app.doctor()).encode(),
        "doctor page": httpx.get(app.side_url + "/", timeout=5).content,
    }
    logs = app.logs()
    assert s["crash"] in logs  # uvicorn's own traceback: outside the agent, cut below
    emitted["logs"] = _UVICORN_TRACEBACK.sub("", logs).encode()
    for where, blob in emitted.items():
        for name, secret in [*s.items(), ("database password", PASSWORD)]:
            assert secret.encode() not in blob, f"{name} found in {where}"


def _statement(span):
    return span.attributes.get("db.statement") or span.attributes.get("db.query.text")


# -- the redaction rules, on real SDK spans -----------------------------------------------------------


def _finished_span(build):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("op", record_exception=False) as span:
        build(span)
    (finished,) = exporter.get_finished_spans()
    return finished


def test_redaction_rules_on_every_attribute_path():
    from opentelemetry.trace import Status, StatusCode

    from fastapi_doctor import redaction

    def build(span):
        span.set_attributes({
            "url.query": "token=abc&flag&page=2",
            "url.full": "https://bob:hunter2@api.example/v1?key=xyz#frag",
            "http.target": "/cb?code=c0de",
            "db.statement": "SELECT * FROM users WHERE email = 'ann@example.com' AND id = 42",
            "http.request.header.authorization": ("Bearer t0ken",),
            "http.request.header.content_type": ("application/json",),
            "peer.service.url": "postgresql://app:pw123@db:5432/app",
            "http.route": "/items/{item_id}",
        })
        try:
            raise ValueError("card 4111-1111 declined")
        except ValueError as exc:
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, "duplicate key (email)=(ann@example.com)"))

    clean = redaction.span(_finished_span(build))
    attrs = dict(clean.attributes)
    assert attrs == {
        "url.query": "token=REDACTED&flag&page=REDACTED",
        "url.full": "https://bob:REDACTED@api.example/v1?key=REDACTED#REDACTED",
        "http.target": "/cb?code=REDACTED",
        "db.statement": "SELECT * FROM users WHERE email = ? AND id = ?",
        "http.request.header.authorization": ("REDACTED",),
        "http.request.header.content_type": ("application/json",),
        "peer.service.url": "postgresql://app:REDACTED@db:5432/app",
        "http.route": "/items/{item_id}",
    }
    (event,) = clean.events
    assert event.attributes["exception.type"] == "ValueError"
    assert "exception.message" not in event.attributes
    stack = event.attributes["exception.stacktrace"]
    assert stack.startswith('File "') and "in build" in stack and "4111" not in stack
    assert clean.status.status_code is StatusCode.ERROR and clean.status.description is None


def test_redaction_leaves_clean_spans_alone_and_query_redaction_can_be_switched_off():
    from fastapi_doctor import redaction

    plain = _finished_span(lambda span: span.set_attributes({"http.route": "/a", "code.function.name": "m.f"}))
    assert redaction.span(plain) is plain  # nothing copied when nothing needs a change
    try:
        redaction.configure(query_values=False)
        kept = redaction.span(_finished_span(lambda span: span.set_attribute("url.query", "page=2")))
        assert kept.attributes["url.query"] == "page=2"
    finally:
        redaction.configure(query_values=True)
