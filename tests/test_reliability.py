"""The agent never changes, breaks or slows the app, through real servers:

* odd input (raw paths, huge headers, non-UTF-8 bytes), websockets, lifespan, endpoint exceptions and
  clients leaving mid-stream behave exactly as without the agent (status, headers but Date, body,
  exception propagation);
* the side server under a slowloris client and oversized requests leaves the app's latency alone;
* prefork servers (gunicorn -w 4, uvicorn --workers 4) and uvicorn --reload: every worker's metrics
  and findings are visible on its own port, spans from every worker pid arrive, no series is lost or
  counted twice;
* shutdown flushes pending spans, and returns within a bounded time when the collector hangs;
* the fork hook is undone by uninstrument().
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import psutil
import pytest
from harness import BIN, concurrent_get, free_port, metric_value, side_servers, wait_until

# -- raw HTTP: the bytes a client really sends, nothing normalised -------------------------------------


def raw_request(port: int, request: bytes, timeout: float = 10.0) -> tuple[int | None, list[tuple[bytes, bytes]], bytes]:
    """Send ``request`` as is; return (status, headers without Date, body) of the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    if not raw:
        return None, [], b""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(line.split(b":", 1)) for line in lines[1:]]
    return status, [(k.lower(), v.strip()) for k, v in headers if k.lower() != b"date"], body


def get(target: bytes, *headers: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: test\r\n" + b"".join(h + b"\r\n" for h in headers) + b"Connection: close\r\n\r\n"


ODD_REQUESTS = {
    "plain": get(b"/items/3"),
    "query": get(b"/items/3?q=a%20b&q=c"),
    "bad percent": get(b"/items/%zz"),
    "non-utf8 path": get(b"/echo-path/\xff\xfe%ff"),
    "non-utf8 query": get(b"/echo-path/x?k=\xff&%ff=1"),
    "encoded slash": get(b"/echo-path/a%2Fb/..%2f..%2fetc"),
    "double slash": get(b"//items/3"),
    "dot segments": get(b"/items/../items/3"),
    "long path": get(b"/echo-path/" + b"a" * 6000),
    "no route": get(b"/nowhere/" + b"x" * 100),
    "validation error": get(b"/items/not-a-number"),
    "non-utf8 header": get(b"/headers", b"X-Bin: \xff\xfe\x80", b"User-Agent: \xc3\x28"),
    "huge headers": get(b"/headers", *(b"X-Pad-%d: " % i + b"v" * 4000 for i in range(20))),
    "oversized header": get(b"/headers", b"X-Huge: " + b"h" * 200_000),
    "odd method": b"BREW /items/3 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    "head": b"HEAD /items/3 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    "options": b"OPTIONS /items/3 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    "post body": b"POST /body HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n" + b"\x00\xff" * 50_000,
    "chunked body": b"POST /body HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "traceparent junk": get(b"/items/3", b"traceparent: 00-zz-yy-01", b"baggage: \xff=\xff"),
    "lifespan state": get(b"/state"),
    "stream": get(b"/stream?chunks=7"),
    "endpoint exception": get(b"/boom"),
    "sync endpoint exception": get(b"/boom-sync"),
    "malformed request line": b"GET /items/3 HTTP/1.1 extra\r\nHost: test\r\n\r\n",
}


@pytest.fixture(scope="module")
def twin_servers():
    """rel_app without the agent and under the wrapper, every request sampled (the most agent code)."""
    from harness import AppProcess

    bare = AppProcess("rel_app:app", wrapper=False).start()
    watched = AppProcess("rel_app:app", env={"OTEL_TRACES_SAMPLER_ARG": "1.0"}).start()
    try:
        yield bare, watched
    finally:
        bare.stop()
        watched.stop()


@pytest.mark.parametrize("case", list(ODD_REQUESTS))
def test_odd_requests_get_the_same_response_with_and_without_the_agent(twin_servers, case):
    bare, watched = twin_servers
    request = ODD_REQUESTS[case]
    assert raw_request(watched.port, request) == raw_request(bare.port, request)


def test_exceptions_propagate_and_nothing_inside_the_agent_failed(twin_servers):
    bare, watched = twin_servers
    for server in (bare, watched):
        for path in ("/boom", "/boom-sync"):
            raw_request(server.port, get(path.encode()))
    # uvicorn saw each exception from the app: the agent neither swallowed nor added one.
    for message in ("RuntimeError: endpoint failure", "ValueError: sync endpoint failure"):
        assert watched.logs().count(message) == bare.logs().count(message) >= 1
    assert "internal error" not in watched.logs()
    text = watched.metrics_text()
    assert metric_value(text, "http_server_request_duration_seconds_count", http_route="/boom", http_response_status_code="500") >= 1


def test_websocket_and_lifespan_pass_through(twin_servers):
    from websockets.sync.client import connect

    results = []
    for server in twin_servers:
        with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            ws.send("doctor")
            reply = ws.recv(timeout=5)
            ws.send("bye")
            with pytest.raises(Exception) as closed:
                ws.recv(timeout=5)
        results.append((reply, getattr(closed.value, "rcvd", None) and closed.value.rcvd.code))
        assert httpx.get(server.url + "/state").json() == {"greeting": "hello", "started": ["up"]}
    assert results[0] == results[1] == ("rotcod", 1000)


def test_client_leaving_mid_stream_changes_nothing(twin_servers):
    for server in twin_servers:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(get(b"/stream?chunks=200&delay=0.01"))
                assert sock.recv(200).startswith(b"HTTP/1.1 200")
            # closed after the first bytes: the endpoint is still producing
        assert httpx.get(server.url + "/items/1").json() == {"id": 1, "q": None}
    bare, watched = twin_servers
    time.sleep(2.5)  # the abandoned streams finish (200 x 10 ms)
    assert "internal error" not in watched.logs()
    assert ("Traceback" in watched.logs()) == ("Traceback" in bare.logs())
    text = watched.metrics_text()
    assert metric_value(text, "http_server_request_duration_seconds_count", http_route="/stream") >= 5


# -- the side server: hostile clients do not touch the app ----------------------------------------------


def _latencies(url: str, n: int = 40) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            start = time.perf_counter()
            assert client.get(url).status_code == 200
            out.append(time.perf_counter() - start)
    return sorted(out)


def test_side_server_slowloris_and_oversized_requests_leave_the_app_alone(serve):
    app = serve("rel_app:app")
    baseline = _latencies(app.url + "/items/1")

    # Oversized requests: a 200 kB header line, then a 50 MB body. Refused, the server answers on.
    status, _, _ = raw_request(app.side_port, get(b"/doctor", b"X-Huge: " + b"h" * 200_000))
    assert status in (None, 400, 414, 431)
    with socket.create_connection(("127.0.0.1", app.side_port), timeout=5) as s:
        s.sendall(b"POST /doctor HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n")
        try:
            for _ in range(50):
                s.sendall(b"\0" * 1_048_576)
        except OSError:
            pass  # the side server closed it without reading
    assert httpx.get(app.side_url + "/healthz", timeout=5).status_code == 200

    # Slowloris: more connections than the side server's slots, each dripping a header line.
    stop = threading.Event()
    socks = []
    for _ in range(40):
        try:
            s = socket.create_connection(("127.0.0.1", app.side_port), timeout=2)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            pass

    def drip():
        while not stop.is_set():
            for s in socks:
                try:
                    s.sendall(b"X-a: b\r\n")
                except OSError:
                    pass
            stop.wait(0.5)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(1)
        under_attack = _latencies(app.url + "/items/1")
    finally:
        stop.set()
        dripper.join()
        for s in socks:
            s.close()
    # Generous margin on a shared machine: the app's median stays of the same order.
    assert under_attack[len(under_attack) // 2] < max(0.25, 10 * baseline[len(baseline) // 2])
    # The side server recovers once the clients are gone.
    wait_until(lambda: httpx.get(app.side_url + "/healthz", timeout=2).status_code == 200, timeout=60)
    assert "internal error" not in app.logs()


# -- prefork, reload --------------------------------------------------------------------------------------




def _spread_requests(url: str, n: int) -> dict[int, int]:
    """n requests on fresh connections (the kernel spreads them over the workers): pid -> count."""
    counts: dict[int, int] = {}
    for response in concurrent_get(url, n, concurrency=12, headers={"Connection": "close"}):
        assert response.status_code == 200
        pid = response.json()["pid"]
        counts[pid] = counts.get(pid, 0) + 1
    return counts


PREFORK = {
    "gunicorn": ["{bin}/gunicorn", "-w", "4", "-k", "uvicorn.workers.UvicornWorker", "-b", "127.0.0.1:{port}"],
    "gunicorn --preload": ["{bin}/gunicorn", "-w", "4", "-k", "uvicorn.workers.UvicornWorker", "-b", "127.0.0.1:{port}",
                           "--preload"],
    "uvicorn --workers": ["{bin}/uvicorn", "--workers", "4", "--host", "127.0.0.1", "--port", "{port}"],
}


@pytest.mark.parametrize("server", list(PREFORK))
def test_prefork_every_worker_visible_exporting_from_its_own_pid(server, otlp):
    from harness import AppProcess

    app = AppProcess(
        "rel_app:app",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
        },
        ready_path="/pid",
    )
    command = [part.format(bin=BIN, port=app.port) for part in PREFORK[server]]
    app.command = [str(BIN / "opentelemetry-instrument"), *command, "rel_app:app"]
    app.start(timeout=60)
    try:
        # All four workers up and answering on their own side-server ports.
        wait_until(lambda: len(side_servers(app.side_port)) >= 4, timeout=30)
        served = _spread_requests(app.url + "/pid", 120)
        assert len(served) >= 2  # the kernel spread the connections
        servers = side_servers(app.side_port)
        assert set(served) <= set(servers), (served, servers.keys())
        if server == "gunicorn --preload":
            # The master imported the app first: it keeps the base port, the workers the next ones.
            assert servers[app.proc.pid]["port"] == app.side_port
        ports = [servers[pid]["port"] for pid in served]
        assert len(set(ports)) == len(ports)

        # Every request counted exactly once, by the worker that served it, on that worker's port; the
        # process metrics are the worker's own (not the parent's, whose pid psutil had cached).
        total = 0
        for pid, count in served.items():
            text = httpx.get(f"http://127.0.0.1:{servers[pid]['port']}/metrics", timeout=5).text
            rss = psutil.Process(pid).memory_info().rss
            assert 0.9 * rss < metric_value(text, "process_memory_usage_bytes") < 1.1 * rss
            got = metric_value(text, "http_server_request_duration_seconds_count", http_route="/pid") or 0
            assert got >= count, (pid, got, count)  # the harness's readiness probes add a few
            total += got
        assert total <= 120 + 4 * 3

        # Findings: each worker finds what happened in it, and shows it on its own port.
        # A block is a finding once it recurs: the workers that blocked in both rounds.
        rounds = [_spread_requests(app.url + "/block", 8) for _ in range(2)]
        blocked = set(rounds[0]) & set(rounds[1])
        assert blocked
        for pid in blocked:
            port = servers[pid]["port"]

            def found(port=port):
                doc = httpx.get(f"http://127.0.0.1:{port}/doctor", timeout=5).json()
                return [f for f in doc["findings"] if f["root_cause"] == "blocking_io" and f["route"] == "/block"]

            assert wait_until(found, timeout=15)[0]["location"]["function"] == "block"

        # Spans from every worker that served, each stamped with its own pid (exporters re-created after fork).
        def span_pids():
            pids = {s.resource.get("process.pid") for s in otlp.spans() if s.attributes.get("http.route") == "/pid"}
            return pids if set(served) <= pids else None

        assert app.proc.pid not in wait_until(span_pids, timeout=20)

        # OTLP metrics: one series per worker (its pid on the resource), none from the master's requests.
        def metric_pids():
            pids = set()
            for req in list(otlp.metric_requests):
                for rm in req.resource_metrics:
                    pid = next((a.value.int_value for a in rm.resource.attributes if a.key == "process.pid"), None)
                    names = {m.name for sm in rm.scope_metrics for m in sm.metrics}
                    if "http.server.request.duration" in names:
                        pids.add(pid)
            return pids if set(served) <= pids else None

        try:
            assert app.proc.pid not in wait_until(metric_pids, timeout=20)
        except AssertionError:
            seen = {}
            for req in list(otlp.metric_requests):
                for rm in req.resource_metrics:
                    pid = next((a.value.int_value for a in rm.resource.attributes if a.key == "process.pid"), None)
                    seen.setdefault(pid, set()).update(m.name for sm in rm.scope_metrics for m in sm.metrics)
            raise AssertionError(f"served {served}, master {app.proc.pid}, OTLP metrics by pid {seen}\n{app.logs()[-3000:]}")
    finally:
        app.stop()
    assert "internal error" not in app.logs()


def test_uvicorn_reload_keeps_the_side_server_with_the_app(serve, tmp_path):
    watched = tmp_path / "watched.py"
    watched.write_text("x = 1\n")
    app = serve("rel_app:app", server_args=["--reload", "--reload-dir", str(tmp_path)], ready_path="/pid")
    first = httpx.get(app.url + "/pid").json()["pid"]
    assert app.doctor()["pid"] == first  # the reloader process holds no port: the app has the base port
    watched.write_text("x = 2\n")

    def new_pid():
        pid = httpx.get(app.url + "/pid", timeout=2).json()["pid"]
        return pid if pid != first else None

    second = wait_until(new_pid, timeout=30)
    assert wait_until(lambda: app.doctor()["pid"] == second, timeout=15)
    httpx.get(app.url + "/items/1")
    assert metric_value(app.metrics_text(), "http_server_request_duration_seconds_count", http_route="/items/{item_id}") == 1


# -- shutdown --------------------------------------------------------------------------------------------


def test_shutdown_flushes_pending_spans(serve, otlp):
    app = serve(
        "rel_app:app",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing is exported before the exit
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        },
    )
    for i in range(25):
        httpx.get(f"{app.url}/items/{i}")
    time.sleep(0.5)
    assert not [s for s in otlp.spans() if s.attributes.get("http.route") == "/items/{item_id}"]
    started = time.monotonic()
    app.stop(timeout=30)
    took = time.monotonic() - started
    spans = [s for s in otlp.spans() if s.attributes.get("http.route") == "/items/{item_id}" and s.scope == "fastapi"]
    assert len(spans) == 25
    assert otlp.metric_points("http.server.request.duration")  # the last metric export too
    assert took < 10


def test_shutdown_is_bounded_when_the_collector_hangs(serve, otlp):
    from fastapi_doctor.lifecycle import SHUTDOWN_TIMEOUT_S

    app = serve(
        "rel_app:app",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60",  # an exporter that would wait a minute
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        },
    )
    from test_faults import silent_collector

    port = otlp.port
    otlp.stop()
    silent = silent_collector(port)  # accepts connections, never answers
    for i in range(25):
        httpx.get(f"{app.url}/items/{i}")
    started = time.monotonic()
    try:
        app.stop(timeout=60)
    finally:
        silent.close()
    took = time.monotonic() - started
    assert app.proc.returncode in (0, -15), app.logs()[-2000:]  # uvicorn re-raises SIGTERM once shut down
    assert took < SHUTDOWN_TIMEOUT_S + 8, took  # uvicorn's own shutdown and interpreter exit on top
    assert app.logs().count("telemetry not flushed") == 1
    assert "Application shutdown complete" in app.logs()


# -- undo ------------------------------------------------------------------------------------------------

_FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading
    from fastapi import FastAPI
    import fastapi_doctor
    from fastapi_doctor import _agent

    app = FastAPI()
    fastapi_doctor.instrument(app, prometheus_port={port}, prometheus_host="127.0.0.1")
    parent_port = _agent.get().server.port

    def child(report):
        agent = _agent.get()
        port = agent.server.port if agent is not None and agent.server is not None else None
        threads = sorted(t.name for t in threading.enumerate())
        os.write(report, json.dumps({{"port": port, "threads": threads}}).encode())
        os._exit(0)

    def fork_and_read():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            child(w)
        os.close(w)
        data = os.read(r, 65536)
        os.waitpid(pid, 0)
        return json.loads(data)

    running = fork_and_read()
    fastapi_doctor.uninstrument()
    undone = fork_and_read()
    print(json.dumps({{"parent_port": parent_port, "running": running, "undone": undone}}))
    """
)


def test_fork_gives_the_child_its_own_side_server_and_uninstrument_undoes_it(tmp_path):
    port = free_port()
    script = tmp_path / "fork_check.py"
    script.write_text(_FORK_SCRIPT.format(port=port))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["parent_port"] == port
    # A forked child: its own side server on the next port (the parent's socket released in the child).
    assert port < result["running"]["port"] <= port + 64  # port + 1 unless another process holds it
    assert "fastapi-doctor-server" in result["running"]["threads"]
    # After uninstrument(): the fork hook does nothing.
    assert result["undone"]["port"] is None
    assert "fastapi-doctor-server" not in result["undone"]["threads"]



# Forks when told on stdin; the child prints its pid and lives until killed.
_FORK_DURING_EXPORT_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from fastapi import FastAPI
    import fastapi_doctor

    app = FastAPI()
    fastapi_doctor.instrument(app, prometheus_port=0, prometheus_host="127.0.0.1")
    print("ready", flush=True)
    sys.stdin.readline()
    pid = os.fork()
    if pid == 0:
        print(os.getpid(), flush=True)
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
    """
)


def test_worker_forked_while_the_parent_exports_metrics_exports_its_own(otlp, tmp_path):
    # gunicorn --preload forks its workers while the master's metric reader may be exporting: the child
    # must not inherit an export in progress (it would never export again).
    script = tmp_path / "fork_during_export.py"
    script.write_text(_FORK_DURING_EXPORT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint, OTEL_METRIC_EXPORT_INTERVAL="200")
    otlp.delay_s = 3.0  # the parent's export hangs on the collector...
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    child = None
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_until(lambda: otlp.in_flight > 0, timeout=20)
        proc.stdin.write("fork\n")  # ...while it forks
        proc.stdin.flush()
        child = int(proc.stdout.readline())
        otlp.delay_s = 0.0

        def child_exported():
            return any(
                a.key == "process.pid" and a.value.int_value == child
                for req in list(otlp.metric_requests)
                for rm in req.resource_metrics
                for a in rm.resource.attributes
            )

        assert wait_until(child_exported, timeout=15)
    finally:
        for pid in (child, proc.pid):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait()


# -- child processes under the wrapper ------------------------------------------------------------------

# Run under opentelemetry-instrument: this process serves the side server on its port, then starts a
# Python child that inherits the environment (as a test runner's worker or a task runner would) and a
# multiprocessing spawn child. Prints what the children wrote to stderr and which port serves them.
_PARENT_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing, os, subprocess, sys
    import fastapi  # the side server binds now, on OTEL_EXPORTER_PROMETHEUS_PORT

    CHILD = '''
    import json, os, sys, urllib.request
    import fastapi
    base = int(os.environ["OTEL_EXPORTER_PROMETHEUS_PORT"])
    port = None
    for candidate in range(base, base + 65):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{candidate}/doctor", timeout=1) as r:
                if json.load(r)["pid"] == os.getpid():
                    port = candidate
                    break
        except OSError:
            pass
    print(json.dumps({"port": port}))
    '''

    def spawned(queue):
        import fastapi  # noqa: F401
        queue.put(os.getpid())

    if __name__ == "__main__":
        child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=spawned, args=(queue,))
        proc.start()
        queue.get(timeout=60)
        proc.join(timeout=60)
        print(json.dumps({"child": json.loads(child.stdout.strip().splitlines()[-1]), "stderr": child.stderr,
                          "returncode": child.returncode}))
    """
)


# Starts a child as test suites that isolate OpenTelemetry do (FastAPI's own): the OTEL_* environment
# removed, the rest (the wrapper's PYTHONPATH) inherited. Prints what the child saw.
_SCRUBBING_PARENT_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    import fastapi  # noqa: F401

    CHILD = (
        "import json, sys\\n"
        "from opentelemetry import trace\\n"
        "print(json.dumps({'sdk_imported': 'opentelemetry.sdk' in sys.modules,\\n"
        "                  'tracer_provider': type(trace.get_tracer_provider()).__name__}))\\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    child = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    print(json.dumps({"child": json.loads(child.stdout.strip().splitlines()[-1]), "stderr": child.stderr}))
    """
)


def test_a_child_whose_parent_removed_the_otel_environment_runs_without_opentelemetry(tmp_path):
    script = tmp_path / "scrubbing_parent.py"
    script.write_text(_SCRUBBING_PARENT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
    env.update({"OTEL_EXPORTER_PROMETHEUS_PORT": str(free_port()), "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"})
    out = subprocess.run([str(BIN / "opentelemetry-instrument"), str(BIN / "python"), str(script)],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # As without the wrapper: no SDK, no global provider set, nothing said.
    assert result["child"] == {"sdk_imported": False, "tracer_provider": "ProxyTracerProvider"}
    assert result["stderr"] == ""


@pytest.mark.parametrize("child_side_server", ["true", "false"])
def test_a_python_child_under_the_wrapper_takes_the_next_port_quietly(tmp_path, child_side_server):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT_SCRIPT)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_DOCTOR_"))}
    env.update({"OTEL_EXPORTER_PROMETHEUS_PORT": str(port), "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
                "FASTAPI_DOCTOR_CHILD_SIDE_SERVER": child_side_server})
    out = subprocess.run([str(BIN / "opentelemetry-instrument"), str(BIN / "python"), str(script)],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Nothing on the children's stderr (before: "side server cannot listen ... address already in use").
    assert result["returncode"] == 0 and result["stderr"] == ""
    assert out.stderr == ""  # the parent's, with the multiprocessing child's
    if child_side_server == "true":
        assert port < result["child"]["port"] <= port + 64
    else:
        assert result["child"]["port"] is None
