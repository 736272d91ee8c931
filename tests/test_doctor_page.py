"""The doctor page: the patient's real findings and the charts of the last minutes, in a real headless
Chromium; the history behind the charts, read from a real Prometheus registry."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
from harness import ROOT, AppProcess, wait_until
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fastapi_doctor.publish.history import History
from fastapi_doctor.publish.report.html import render_page

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


class Dom(HTMLParser):
    """Elements of a dumped DOM: (tag, attributes, text inside) for the tags the assertions need."""

    WATCH = {"tr", "figure", "polyline", "circle", "section", "svg", "script", "link", "img"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.WATCH:
            element = {"tag": tag, "attrs": dict(attrs), "text": ""}
            self.elements.append(element)
            if tag not in ("polyline", "circle", "link", "img"):
                self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i]["tag"] == tag:
                del self._open[i:]
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data

    def find(self, tag: str, **attrs: str) -> list[dict[str, Any]]:
        return [e for e in self.elements if e["tag"] == tag and all(e["attrs"].get(k) == v for k, v in attrs.items())]


def chromium(*args: str, user_data: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(binary).exists(), "Debian's chromium is needed (bash .ci/run installs it)"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_data}", *args],
                          capture_output=True, text=True, timeout=timeout)


def _load(base: str, paths: list[str], stop: threading.Event) -> None:
    with httpx.Client(timeout=30, headers={"Accept-Encoding": "gzip"}) as client:
        i = 0
        while not stop.is_set():
            try:
                client.get(base + paths[i % len(paths)])
            except httpx.HTTPError:
                pass
            i += 1


def _carts(base: str, stop: threading.Event) -> None:
    """Five users opening a cart in turn, a second apart: the session the patient leaves open for a
    user is closed only when that user comes back, five seconds later (a leak for that long), and at
    most five connections are held."""
    with httpx.Client(timeout=30) as client:
        user = 0
        while not stop.is_set():
            try:
                client.get(f"{base}/carts/{user % 5 + 1}")
            except httpx.HTTPError:
                pass
            user += 1
            stop.wait(1.0)


def test_doctor_page_in_chromium_shows_each_finding_and_the_charts(tmp_path):
    patient = AppProcess(
        "fastapi_doctor_demo.patient:app",
        env={"PATIENT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'patient.db'}",
             "FASTAPI_DOCTOR_LEAK_SECONDS": "1"},
        ready_path="/healthz",
    )
    patient.start(timeout=60)
    try:
        stop = threading.Event()
        mixes = [
            ["/quotes/ACME", "/v2/quotes/ACME"],
            ["/customers/1/orders", "/orders/recent", "/v2/products?page=2"],
            ["/products/export", "/products/3", "/v2/customers/2/orders"],
        ]
        threads = [threading.Thread(target=_load, args=(patient.url, mix, stop)) for mix in mixes]
        threads.append(threading.Thread(target=_carts, args=(patient.url, stop)))
        for t in threads:
            t.start()
        try:
            # Three chart points at least (one every 2 s), the load running through them.
            wait_until(lambda: len(re.findall(r'data-series="request_rate" data-points="([3-9]|\d\d+)"',
                                              httpx.get(patient.side_url + "/").text)), timeout=30, interval=0.5)
            # The findings the running detectors must reach under this load (a busy machine is slower).
            detectors = patient.doctor()["detectors"]
            expected = ({"blocking_io"} if "eventloop" in detectors else set()) | (
                {"n_plus_one", "pool_leak"} if "db" in detectors else set())
            def missing() -> set[str]:
                return expected - {f["root_cause"] for f in patient.doctor()["findings"]}

            try:
                wait_until(lambda: not missing(), timeout=60, interval=0.5)
            except AssertionError:
                raise AssertionError(f"no {sorted(missing())} finding under the load") from None
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        doc = patient.doctor()
        assert doc["findings"], "the patient's sick routes gave no finding at all"

        dump = chromium("--dump-dom", patient.side_url + "/", user_data=tmp_path / "chromium")
        assert dump.returncode == 0, dump.stderr[-2000:]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = chromium("--window-size=1280,1800", f"--screenshot={ARTIFACTS / 'doctor.png'}",
                        patient.side_url + "/", user_data=tmp_path / "chromium-shot")
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert (ARTIFACTS / "doctor.png").stat().st_size > 10_000
    finally:
        patient.stop()

    dom = Dom(dump.stdout)
    # Self-contained: no script, no stylesheet or image from anywhere.
    assert not dom.find("script") and not dom.find("link") and not dom.find("img")
    assert "http://" not in dump.stdout.replace(patient.side_url, "") and "https://" not in dump.stdout

    # A section per root cause; every finding the agent had is on the page, with its route and line.
    sections = {e["attrs"].get("data-root-cause") for e in dom.find("section")}
    assert {"blocking_io", "dependency_rebuild", "pool_leak", "slow_middleware", "large_payload",
            "n_plus_one"} <= sections
    rows = {e["attrs"]["data-id"]: e["text"] for e in dom.find("tr") if "data-id" in e["attrs"]}
    for finding in doc["findings"]:
        # The page was dumped after /doctor was read: a finding seen since may be newer, never missing.
        assert finding["id"] in rows, finding
        text = rows[finding["id"]]
        assert (finding["route"] or "—") in text
        loc = finding["location"]
        if loc:
            assert f"{loc['file']}:" in text and loc["function"] in text
    found = {f["root_cause"] for f in doc["findings"]}
    if "eventloop" in doc["detectors"]:
        assert "blocking_io" in found
    if "db" in doc["detectors"]:
        assert {"n_plus_one", "pool_leak"} <= found

    # Charts: request rate always; lag, pool and sizes whenever their detector runs.
    charts = {e["attrs"]["data-series"]: e for e in dom.find("figure")}
    assert set(charts) == {"loop_lag_ms", "pool_used", "response_bytes", "request_rate"}
    drawn = ["request_rate"]
    if "eventloop" in doc["detectors"]:
        drawn.append("loop_lag_ms")
    if "db" in doc["detectors"]:
        drawn.append("pool_used")
    if "responses" in doc["detectors"]:
        drawn.append("response_bytes")
    lines = dom.find("polyline", **{"class": "series"})
    assert len(lines) >= len(drawn)
    for key in drawn:
        assert int(charts[key]["attrs"]["data-points"]) >= 3, key
        assert "max" in charts[key]["text"] and "now" in charts[key]["text"], charts[key]["text"]
    for line in lines:
        points = line["attrs"]["points"].split()
        assert len(points) >= 2
        for p in points:
            x, y = (float(v) for v in p.split(","))
            assert 0 <= x <= 300 and 0 <= y <= 90


def test_page_escapes_everything_it_shows():
    finding = {
        "id": "abc123", "root_cause": "blocking_io", "route": "/x/<script>alert(1)</script>",
        "summary": "<img src=x onerror=alert(1)>", "evidence": {"call": "<b>bold</b>", "n": 3},
        "location": {"file": "app/<x>.py", "line": 4, "function": "f<g>"}, "count": 2,
        "runbook": "docs/runbooks/blocking_io.md",
    }
    page = render_page({"service": "<svc>", "findings": [finding]}, history=None)
    assert "<script>" not in page and "<img" not in page and "<b>bold" not in page and "<svc>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "app/&lt;x&gt;.py:4 in f&lt;g&gt;" in page


def test_history_reads_the_catalogue_metrics_from_a_prometheus_registry():
    registry = CollectorRegistry()
    lag = Histogram("fastapi_doctor_eventloop_lag_seconds", "lag", registry=registry,
                    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0))
    requests = Histogram("http_server_request_duration_seconds", "d", ["http_route"], registry=registry)
    size = Histogram("http_server_response_body_size_bytes", "s", ["http_route"], registry=registry,
                     buckets=(1000, 100000, 1000000))
    used = Gauge("db_client_connection_count", "c", ["db_client_connection_pool_name", "db_client_connection_state"],
                 registry=registry)
    limit = Gauge("db_client_connection_max", "m", ["db_client_connection_pool_name"], registry=registry)
    Counter("unrelated_total", "ignored", registry=registry).inc(5)
    now = [1000.0]
    history = History(registry.collect, clock=lambda: now[0])

    for _ in range(100):
        lag.observe(0.002)
    history.sample()  # the baseline: no point yet
    assert history.snapshot()["t"] == []

    now[0] += 2.0
    for _ in range(98):
        lag.observe(0.002)
    lag.observe(0.3)
    lag.observe(0.4)  # 2 % of this interval's beats were very late
    for route in ("/a", "/b"):
        for _ in range(10):
            requests.labels(route).observe(0.01)
    size.labels("/a").observe(800_000)
    size.labels("/b").observe(200_000)
    used.labels("main", "used").set(7)
    used.labels("main", "idle").set(3)
    used.labels("other", "used").set(1)
    limit.labels("main").set(15)
    limit.labels("other").set(5)
    history.sample()

    snap = history.snapshot()
    assert snap["t"] == [1002.0]
    assert snap["request_rate"] == [10.0]  # 20 requests in 2 s
    assert snap["response_bytes"] == [500_000.0]
    assert snap["pool_used"] == [8.0] and snap["pool_max"] == [20.0]
    # p99 of this interval only (the first 100 beats are not in it): inside the 0.1-0.5 s bucket.
    assert 100 < snap["loop_lag_ms"][0] <= 500

    now[0] += 2.0
    history.sample()  # nothing happened in between
    snap = history.snapshot()
    assert snap["request_rate"][-1] == 0.0
    assert snap["response_bytes"][-1] is None and snap["loop_lag_ms"][-1] is None


def test_history_is_bounded_and_shows_gaps_not_zeros():
    registry = CollectorRegistry()
    clock = iter(float(i) for i in range(1000))
    history = History(registry.collect, max_points=5, clock=lambda: next(clock))
    for _ in range(12):
        history.sample()
    snap = history.snapshot()
    assert snap["t"] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert snap["loop_lag_ms"] == [None] * 5 and snap["pool_used"] == [None] * 5
    page = render_page({"service": "s", "findings": []}, history=snap)
    assert page.count('data-points="0"') == 3 and page.count("no data yet") == 3
    assert 'data-series="request_rate" data-points="5"' in page
