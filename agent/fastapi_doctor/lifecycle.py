"""The telemetry pipelines over the life of the process: bounded queues, fork, shutdown.

* Export queues are bounded; every item that never reaches the collector (queue full, export
  failed) is counted in ``fastapi_doctor.export.dropped`` by ``signal``.
* After a fork (gunicorn's prefork workers), the child builds fresh OTLP exporters (a gRPC channel
  of the parent is not fork-safe) and stamps its own ``process.pid``; the SDK restarts its export
  threads itself.
* When the app shuts down (ASGI lifespan ``shutdown``: uvicorn re-raises SIGTERM after it, so no
  ``atexit`` handler runs) and at exit, pending telemetry is flushed within :data:`SHUTDOWN_TIMEOUT_S`,
  whatever the collector does: the flush runs on a daemon thread that is abandoned at the deadline.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from fastapi_doctor.kernel import forks
from fastapi_doctor.kernel.instrumentation_context import Instrumentation

_log = logging.getLogger("fastapi_doctor")

# Flushing at exit never takes longer than this.
SHUTDOWN_TIMEOUT_S = 5.0
# Spans waiting for export by default (the SDK's; OTEL_BSP_MAX_QUEUE_SIZE sets it); beyond it the
# oldest are dropped, and counted.
MAX_QUEUE_SIZE = 2048

TRACES = {"signal": "traces"}
METRICS = {"signal": "metrics"}


class _Dropped:
    def __init__(self) -> None:
        self.counter: Any = None

    def add(self, count: int, attrs: dict[str, str]) -> None:
        if self.counter is not None and count > 0:
            self.counter.add(count, attrs)


dropped = _Dropped()


def create_dropped_counter(meter: Any) -> None:
    dropped.counter = meter.create_counter(
        "fastapi_doctor.export.dropped",
        unit="{item}",
        description="Spans and metric points that never reached the collector (queue full or export failed).",
    )


def count_points(metrics_data: Any) -> int:
    try:
        return sum(
            len(metric.data.data_points)
            for rm in metrics_data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        )
    except Exception:
        return 0


class BoundedSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans it drops when its queue is full."""

    def __init__(self, exporter: SpanExporter, max_queue_size: int | None = None) -> None:
        try:
            super().__init__(exporter, max_queue_size=max_queue_size)
        except ValueError as exc:  # OTEL_BSP_* values the SDK rejects (it would stop the agent)
            _log.error(
                "fastapi-doctor: OTEL_BSP_SCHEDULE_DELAY / OTEL_BSP_MAX_EXPORT_BATCH_SIZE are invalid (%s); "
                "using the defaults (5000 ms, 512 spans)",
                exc,
            )
            max_queue_size = MAX_QUEUE_SIZE
            super().__init__(exporter, max_queue_size=max_queue_size, schedule_delay_millis=5000,
                             max_export_batch_size=512)
        inner = getattr(self, "_batch_processor", None)
        queue = getattr(inner, "_queue", None)
        self._doctor_queue = queue if hasattr(queue, "__len__") else None
        self._doctor_capacity = getattr(inner, "_max_queue_size", max_queue_size or MAX_QUEUE_SIZE)

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._doctor_queue
        if queue is not None and len(queue) >= self._doctor_capacity:
            context = span.context
            if context is not None and context.trace_flags.sampled:
                dropped.add(1, TRACES)  # the batch processor drops its oldest span for this one
        super().on_end(span)


class Recreatable:
    """Mixin of the exporter wrappers: the inner exporter can be built again (after a fork)."""

    _inner: Any
    _factory: Callable[[], Any] | None = None

    def recreate(self) -> None:
        if self._factory is not None:
            # Keep the parent's exporter referenced: closing or collecting its gRPC channel from the
            # child is what is not fork-safe.
            _abandoned.append(self._inner)
            self._inner = self._factory()


_abandoned: list[Any] = []


class Lifecycle:
    """What the fork and exit hooks act on; one per process (the providers are global)."""

    def __init__(
        self,
        *,
        tracer_provider: Any,
        meter_provider: Any,
        resource: Any,
        owned: bool,
        exporters: tuple[Recreatable, ...] = (),
        on_fork: tuple[Callable[[], None], ...] = (),
        before_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.resource = resource
        self.owned = owned
        self.exporters = exporters
        self.on_fork = on_fork
        self.before_shutdown = before_shutdown
        self.shut_down = False

    def needs_flush(self) -> bool:
        return not self.shut_down and self.owned and bool(self.exporters)

    def flush(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Export what is pending (providers stay up), within ``timeout_s``. True when it finished."""
        if not self.needs_flush():
            return True
        deadline = time.monotonic() + timeout_s

        def work() -> None:
            for provider in (self.tracer_provider, self.meter_provider):
                try:
                    provider.force_flush(max(0, int((deadline - time.monotonic()) * 1000)))
                except Exception:
                    _log.debug("fastapi-doctor: flush failed", exc_info=True)

        return _bounded(work, timeout_s, "flushed at shutdown")

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Flush and stop, within ``timeout_s``. True when everything finished in time."""
        if self.shut_down:
            return True
        self.shut_down = True
        if self.before_shutdown is not None:
            try:
                self.before_shutdown()
            except Exception:
                _log.debug("fastapi-doctor: pre-shutdown step failed", exc_info=True)
        if not self.owned:
            return True
        deadline = time.monotonic() + timeout_s

        def remaining_ms() -> int:
            return max(0, int((deadline - time.monotonic()) * 1000))

        def work() -> None:
            try:
                self.tracer_provider.force_flush(remaining_ms())
                self.tracer_provider.shutdown()
            except Exception:
                _log.debug("fastapi-doctor: tracer provider shutdown failed", exc_info=True)
            try:
                self.meter_provider.shutdown(timeout_millis=remaining_ms())
            except Exception:
                _log.debug("fastapi-doctor: meter provider shutdown failed", exc_info=True)

        return _bounded(work, timeout_s, "flushed at exit")

    def after_fork(self) -> None:
        for hook in self.on_fork:
            hook()
        for exporter in self.exporters:
            exporter.recreate()
        if self.owned:
            stamp_pid(self.resource, (self.tracer_provider, self.meter_provider))


_warned = False


def _bounded(work: Callable[[], None], timeout_s: float, what: str) -> bool:
    global _warned
    thread = threading.Thread(target=work, name="fastapi-doctor-flush", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        if not _warned:
            _warned = True
            _log.warning(
                "fastapi-doctor: telemetry not %s within %.1f s (collector slow or down); the rest is dropped",
                what,
                timeout_s,
            )
        return False
    return True


def flushing_send(send: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a lifespan ``send``: pending telemetry is flushed (bounded, off the loop) before the app
    reports its shutdown complete, the last moment the process is sure to run code."""

    async def send_flushing(message: Any) -> None:
        current = _current
        if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and (
            current is not None and current.needs_flush()
        ):
            try:
                import asyncio

                try:
                    asyncio.get_running_loop()
                except RuntimeError:  # another event loop (trio): flush here, bounded, at shutdown
                    current.flush()
                else:
                    await asyncio.to_thread(current.flush)
            except Exception as exc:
                from fastapi_doctor import containment

                containment.report("flush at shutdown", exc)
        await send(message)

    return send_flushing


def stamp_pid(resource: Any, providers: tuple[Any, ...]) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.attributes import BoundedAttributes

    pid = os.getpid()
    if resource is not None and resource.attributes.get("process.pid") not in (None, pid):
        # Everything that holds the agent's resource (readers included) sees the child's pid.
        attrs = dict(resource.attributes)
        attrs["process.pid"] = pid
        resource._attributes = BoundedAttributes(attributes=attrs, immutable=True)
    for provider in providers:
        update = getattr(provider, "_update_resource", None)
        if update is not None:
            update(Resource({"process.pid": pid}))


_current: Lifecycle | None = None

# Every SDK collection (the periodic OTLP reader's, the side server's Prometheus scrape) runs under this
# gate, and a fork waits for it: a child must not inherit the SDK's storage locks taken by a thread
# that does not exist in it (its collections would wait forever). Exports run outside the gate.
collect_gate = threading.Lock()


def gate_collection(instrumentation: Instrumentation, reader: Any) -> None:
    """Run ``reader``'s SDK collection under :data:`collect_gate` (once its provider has set it), until
    the agent is uninstrumented."""
    if getattr(reader, "_collect", None) is not None:
        instrumentation.patch(reader, "_collect", _gated)


def _gated(collect: Callable[..., Any]) -> Callable[..., Any]:
    def gated(*args: Any, **kwargs: Any) -> Any:
        with collect_gate:
            return collect(*args, **kwargs)

    return gated


def current() -> Lifecycle | None:
    return _current


def register(lifecycle: Lifecycle) -> None:
    """Make ``lifecycle`` the one the exit and fork hooks act on (hooks installed once per process)."""
    global _current
    first = _current is None
    _current = lifecycle
    if first:
        atexit.register(_at_exit)
        forks.on_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def _fork_locks() -> list[Any]:
    from fastapi_doctor.publish import server  # the side server's scrape lock, taken before the gate

    return [server._collect_lock, collect_gate]


def _before_fork() -> None:
    for lock in _fork_locks():
        lock.acquire()


def _after_fork_in_parent() -> None:
    for lock in reversed(_fork_locks()):
        lock.release()


def _at_exit() -> None:
    if _current is not None:
        _current.shutdown()


def _after_fork_in_child() -> None:
    global collect_gate
    from fastapi_doctor.publish import server

    server._collect_lock = threading.Lock()
    collect_gate = threading.Lock()
    if _current is None:
        return
    try:
        _current.after_fork()
    except Exception as exc:
        from fastapi_doctor import containment

        containment.report("telemetry after fork", exc)
