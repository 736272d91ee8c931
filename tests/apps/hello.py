"""The smallest app: what a new user starts with."""

import sys

FASTAPI_IMPORTED_AT_START = "fastapi" in sys.modules

from fastapi import FastAPI  # noqa: E402

app = FastAPI()


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@app.get("/gc")
async def collector() -> dict[str, object]:
    import gc

    collectable = gc.get_objects()  # leaves out frozen objects
    return {
        "frozen": gc.get_freeze_count(),
        # The app's objects stay within the collector's reach.
        "app_collectable": any(o is app for o in collectable),
        "fastapi_collectable": any(o is FastAPI for o in collectable),
    }


@app.get("/modules")
async def modules() -> dict[str, object]:
    import fastapi.applications

    stack = app.middleware_stack
    layers = []
    while stack is not None:
        layers.append(f"{type(stack).__module__}.{type(stack).__name__}")
        stack = getattr(stack, "app", None)
    return {
        "fastapi_imported_at_start": FASTAPI_IMPORTED_AT_START,
        "stack": layers,
        "otel_middleware": any("opentelemetry.instrumentation" in layer for layer in layers),
        "fastapi_native": hasattr(fastapi.applications, "NativeTelemetry"),
    }


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("endpoint failure")
