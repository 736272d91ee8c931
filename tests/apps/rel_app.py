"""An app with every kind of traffic the agent must pass through unchanged (reliability tests)."""

import asyncio
import os

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, StreamingResponse

STARTED = []


async def lifespan(app):
    STARTED.append("up")
    yield {"greeting": "hello"}
    STARTED.append("down")


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/pid")
async def pid() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None) -> dict[str, object]:
    return {"id": item_id, "q": q}


@app.get("/echo-path/{rest:path}")
async def echo_path(rest: str, request: Request) -> dict[str, object]:
    return {"rest": rest, "raw": request.scope["raw_path"].decode("latin-1"), "query": request.url.query}


@app.get("/headers")
async def headers(request: Request) -> dict[str, int]:
    return {"count": len(request.headers), "bytes": sum(len(k) + len(v) for k, v in request.headers.items())}


@app.post("/body")
async def body(request: Request) -> PlainTextResponse:
    data = await request.body()
    return PlainTextResponse(f"{len(data)}", headers={"x-body-bytes": str(len(data))})


@app.get("/state")
async def state(request: Request) -> dict[str, object]:
    return {"greeting": request.state.greeting, "started": STARTED}


@app.get("/stream")
async def stream(chunks: int = 5, delay: float = 0.0) -> StreamingResponse:
    async def gen():
        for i in range(chunks):
            if delay:
                await asyncio.sleep(delay)
            yield f"chunk {i}\n".encode()

    return StreamingResponse(gen(), media_type="text/plain")


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("endpoint failure")


@app.get("/boom-sync")
def boom_sync() -> None:
    raise ValueError("sync endpoint failure")


@app.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        if text == "bye":
            await websocket.close(code=1000)
            return
        await websocket.send_text(text[::-1])


@app.get("/block")
async def block() -> dict[str, int]:
    import time

    time.sleep(0.3)  # blocks the event loop: a blocking_io finding on the worker that served it
    return {"pid": os.getpid()}
