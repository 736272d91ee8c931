"""The tasks signal through a real uvicorn (asyncio and uvloop loops): a per-request fire-and-forget
task that never ends is a task_leak at its create_task line; a task dropped without a reference and
destroyed while pending is one too; workers started in the lifespan, BackgroundTasks, gather, a short
fire-and-forget and a long event stream are not. The rule itself is tested in test_rules.py."""

from __future__ import annotations

import threading

import httpx
import pytest
from harness import APPS, AppProcess, metric_value, wait_until
from test_db import marked_line

APP = APPS / "tasks_app.py"


@pytest.fixture(params=["asyncio", "uvloop"])
def app(request: pytest.FixtureRequest):
    proc = AppProcess(
        "tasks_app:app",
        env={"FASTAPI_DOCTOR_TASK_LEAK_SECONDS": "1"},
        server_args=["--loop", request.param],
    ).start()
    yield proc
    proc.stop()


def _task_leaks(app: AppProcess) -> list[dict]:
    return app.findings("task_leak")


def test_fire_and_forget_that_never_ends_is_a_task_leak_at_its_line(app: AppProcess) -> None:
    stream_done = threading.Event()

    def long_stream() -> None:
        with httpx.stream("GET", app.url + "/events/stream", params={"seconds": 2.5}, timeout=10) as r:
            for _ in r.iter_bytes():
                pass
        stream_done.set()

    streamer = threading.Thread(target=long_stream)
    streamer.start()
    with httpx.Client(base_url=app.url, timeout=10) as client:
        for i in range(5):  # the healthy twins first: by the time the sick finding comes they are old
            assert client.post(f"/orders/v2/{i}/notify").status_code == 200
            assert client.get(f"/orders/{i}/summary").status_code == 200
            assert client.post(f"/orders/{i}/ping").status_code == 200
        for i in range(12):
            assert client.post(f"/orders/{i}/notify").status_code == 200
    streamer.join(timeout=15)
    assert stream_done.is_set()

    found = wait_until(lambda: _task_leaks(app), timeout=15)
    assert len(found) == 1, found
    finding = found[0]
    assert finding["route"] == "/orders/{order_id}/notify"
    assert finding["location"]["file"] == "tasks_app.py"
    assert finding["location"]["line"] == marked_line("fire-and-forget", APP)
    assert finding["location"]["function"] == "notify"
    evidence = finding["evidence"]
    assert evidence["reason"] == "outlived_request"
    assert evidence["coroutine"] == "wait_for_delivery"
    assert evidence["alive"] == 12
    assert evidence["outlived_request"] == 12
    assert evidence["routes"] == ["POST /orders/{order_id}/notify"]

    text = app.metrics_text()
    alive = metric_value(text, "fastapi_doctor_asyncio_tasks_alive", fastapi_doctor_asyncio_coroutine="wait_for_delivery")
    assert alive == 12
    workers = metric_value(text, "fastapi_doctor_asyncio_tasks_alive", fastapi_doctor_asyncio_coroutine="worker",
                           code_line_number=str(marked_line("workers", APP)))
    assert workers == 3  # watched, never a finding: created outside any request


def test_task_destroyed_while_pending_is_a_task_leak(app: AppProcess) -> None:
    with httpx.Client(base_url=app.url, timeout=10) as client:
        for i in range(3):
            assert client.post(f"/replies/{i}").status_code == 200
        assert client.post("/collect").status_code == 200

    found = wait_until(lambda: _task_leaks(app), timeout=15)
    assert len(found) == 1, found
    finding = found[0]
    assert finding["route"] == "/replies/{reply_id}"
    assert finding["location"]["line"] == marked_line("dropped", APP)
    assert finding["evidence"]["reason"] == "destroyed_pending"
    assert finding["evidence"]["destroyed_pending"] == 3
    # The app's own log still says what asyncio says without the agent.
    wait_until(lambda: "Task was destroyed but it is pending!" in app.logs(), timeout=5)


UNDO_SCRIPT = """
import asyncio, json, sys
import httpx
sys.path.insert(0, sys.argv[1])
import fastapi_doctor
from tasks_app import app

def mine(loop, coro, **kwargs):
    return asyncio.Task(coro, loop=loop, **kwargs)

def my_handler(loop, context):
    loop.default_exception_handler(context)

async def main():
    loop = asyncio.get_running_loop()
    loop.set_task_factory(mine)
    loop.set_exception_handler(my_handler)
    fastapi_doctor.instrument(app, prometheus_port=0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for i in range(3):
            assert (await client.post(f"/orders/{i}/ping")).status_code == 200
        during = (loop.get_task_factory() is not mine, loop.get_exception_handler() is not my_handler)
        fastapi_doctor.uninstrument()
        after = (loop.get_task_factory() is mine, loop.get_exception_handler() is my_handler)
        r = await client.post("/orders/9/ping")
    print(json.dumps({"during": during, "after": after, "status": r.status_code, "body": r.json()}))

asyncio.run(main())
"""


def test_uninstrument_gives_the_loop_back_its_own_task_factory_and_exception_handler() -> None:
    import json
    import subprocess

    from harness import BIN

    out = subprocess.run([str(BIN / "python"), "-c", UNDO_SCRIPT, str(APPS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["during"] == [True, True]  # chained in front of the app's own
    assert report["after"] == [True, True]
    assert (report["status"], report["body"]) == (200, {"pinged": 9})
