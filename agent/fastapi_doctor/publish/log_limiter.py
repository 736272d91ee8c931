"""Rate limiting of the agent's log records: a storm of identical records becomes one record and a
summary ("… repeated 2,341 times in the last 60 s").

The first record of a key in a window is written; the identical ones after it in the same window
are only counted. When the window ends the count comes back as a summary. Memory is bounded: at
most ``max_keys`` keys are tracked; past that, records of new keys are counted together under one
overflow key per kind and summarised the same way.

Called only for records that are about to be written (the rare path), so it may take a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from time import monotonic
from typing import Any


@dataclass(slots=True)
class Summary:
    """What a window suppressed: ``count`` records identical to ``fields``."""

    kind: str
    fields: dict[str, Any]
    count: int
    window_s: float
    overflow: bool = False


@dataclass(slots=True)
class _Entry:
    kind: str
    start: float
    fields: dict[str, Any]
    count: int = 0
    overflow: bool = False


class LogLimiter:
    def __init__(self, window_s: float = 60.0, max_keys: int = 1024, clock: Callable[[], float] = monotonic) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}

    def admit(self, kind: str, key: Hashable, fields: dict[str, Any]) -> tuple[bool, Summary | None]:
        """(write this record?, summary of the window that just ended for this key, if any)."""
        now = self._clock()
        full_key = (kind, key)
        with self._lock:
            entry = self._entries.get(full_key)
            if entry is not None and now - entry.start < self.window_s:
                entry.count += 1
                return False, None
            ended = None
            if entry is not None:
                del self._entries[full_key]
                ended = self._summary(entry)
            if len(self._entries) >= self.max_keys:
                self._expire(now, into=None)
            if len(self._entries) >= self.max_keys:
                overflow_key = (kind, "__overflow__")
                over = self._entries.get(overflow_key)
                if over is None:
                    # The overflow entry may exceed max_keys by one per kind: bounded all the same.
                    over = self._entries[overflow_key] = _Entry(kind, now, {}, 0, overflow=True)
                over.count += 1
                return False, ended
            self._entries[full_key] = _Entry(kind, now, fields)
            return True, ended

    def expired(self) -> list[Summary]:
        """Summaries of the windows that have ended; their keys are forgotten."""
        out: list[Summary] = []
        with self._lock:
            self._expire(self._clock(), into=out)
        return out

    def drain(self) -> list[Summary]:
        """Summaries of every open window (at shutdown)."""
        with self._lock:
            out = [s for s in (self._summary(e) for e in self._entries.values()) if s is not None]
            self._entries.clear()
        return out

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may be held) and no inherited windows."""
        self._lock = threading.Lock()
        self._entries = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float, into: list[Summary] | None) -> None:
        done = [k for k, e in self._entries.items() if now - e.start >= self.window_s]
        for k in done:
            summary = self._summary(self._entries.pop(k))
            if summary is not None and into is not None:
                into.append(summary)

    def _summary(self, entry: _Entry) -> Summary | None:
        if entry.count == 0:
            return None
        return Summary(entry.kind, entry.fields, entry.count, self.window_s, entry.overflow)


class Flusher:
    """A daemon thread that writes the summaries of ended windows; ``stop()`` takes it back."""

    def __init__(self, limiter: LogLimiter, write: Callable[[Summary], None], interval_s: float) -> None:
        self._limiter = limiter
        self._write = write
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastapi-doctor-log-flusher", daemon=True)

    def start(self) -> Flusher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def flush(self) -> None:
        from fastapi_doctor import containment

        try:
            for summary in self._limiter.expired():
                self._write(summary)
        except Exception as exc:
            containment.report("log summaries", exc)
