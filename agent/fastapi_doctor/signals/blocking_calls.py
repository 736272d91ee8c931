"""Blocking calls on the event loop, as facts: every blocking function blockbuster knows (time.sleep,
socket and file I/O, os calls, sqlite3, a contended lock, input) is intercepted, and a call made on
the thread of a running event loop inside a request is a ``blocking_io`` finding with the user's line.

Used by the pytest plugin (``pytest --doctor``), where a test is too short and the machine too busy
for the loop watchdog's timing to be the only judge; the watchdog still finds CPU-bound blocks
(hashing, parsing) that no call interception sees.

blockbuster itself raises ``BlockingError`` into the caller. Here it only decides: its checker runs
first, and when it raises, the raise is caught before the caller sees it, the call is recorded, and
the original function runs once, with the same arguments, as it would have without the plugin (the
checker raises before calling it). The app's behaviour is unchanged; only a finding is added.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from fastapi_doctor import containment
from fastapi_doctor.observations import CALL_INTERCEPTION
from fastapi_doctor.kernel import blocking_calls


# Library internals that make a blocking call on the loop by design, once per connection, where the
# app has no line to change (blockbuster's own ``can_block_in``): asyncpg stats and reads its
# configuration files (~/.pgpass, ~/.postgresql/*) when it opens a connection.
LIBRARY_CAN_BLOCK = (
    ("asyncpg/connect_utils.py", {"_read_password_file", "_read_password_from_pgpass", "_dot_postgresql_path",
                                  "_parse_connect_dsn_and_args", "_parse_connect_arguments"}),
)


class _Inside(threading.local):
    active = False  # this thread is already running a blocking call that was recorded


class BlockingCallSignal:
    name = "blocking_calls"

    def __init__(self) -> None:
        self._inside = _Inside()
        self.agent: Any = None

    def instrument(self, agent: Any) -> None:
        from blockbuster import BlockBuster

        self.agent = agent
        for function in BlockBuster().functions.values():
            try:
                for filename, functions in LIBRARY_CAN_BLOCK:
                    function.can_block_in(filename, functions)
                function.activate()  # blockbuster's checker is now in place: wrap it
                if function.activated:
                    checker = getattr(function.module, function.func_name)
                    _set(function.module, function.func_name, self._detecting(checker, function))
                    # deactivate() puts the original back (over our wrapper)
                    agent.instrumentation.record(function.deactivate, f"blocking call {function.full_name}")
            except Exception as exc:
                containment.report(f"blocking call {function.full_name}", exc)
                function.deactivate()

    def _detecting(self, checker: Any, function: Any) -> Any:
        from blockbuster import BlockingError

        original = function.original_func
        inside = self._inside
        record = self._record

        def detecting(*args: Any, **kwargs: Any) -> Any:
            if inside.active:
                return original(*args, **kwargs)  # a call inside one already recorded: the outer one is named
            try:
                return checker(*args, **kwargs)
            except BlockingError as exc:
                tb = exc.__traceback__
                if tb is None or tb.tb_next is None or tb.tb_next.tb_next is not None:
                    raise  # raised deeper, by the function itself: not ours to hide
                del exc, tb
                inside.active = True  # set first: the finding's own logging may make such calls too
                try:
                    record(function.full_name)
                    return original(*args, **kwargs)
                finally:
                    inside.active = False

        return detecting

    def _record(self, blocking_function: str) -> None:
        blocking_calls.record(self.agent.report, sys._getframe(2), blocking_function, CALL_INTERCEPTION)


def _set(owner: Any, name: str, value: Any) -> None:
    """As blockbuster does: setattr, or forbiddenfruit for the methods of built-in types."""
    try:
        setattr(owner, name, value)
    except TypeError:
        import forbiddenfruit

        forbiddenfruit.curse(owner, name, value)
