"""``bench/app.py`` instrumented by the peer named in ``BENCH_PEER`` (see peers.py), as each one's
documentation sets it up."""

from __future__ import annotations

import os

from app import app

PEER = os.environ["BENCH_PEER"]

if PEER == "instrumentator":
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator().instrument(app).expose(app)
elif PEER == "logfire":
    import logfire

    logfire.configure(send_to_logfire=False, console=False, service_name="bench")
    logfire.instrument_fastapi(app)
elif PEER == "sentry":
    import sentry_sdk

    # The FastAPI and Starlette integrations are on by default.
    sentry_sdk.init(dsn=os.environ["BENCH_SENTRY_DSN"], traces_sample_rate=0.1)
else:
    raise SystemExit(f"unknown BENCH_PEER {PEER!r}")
