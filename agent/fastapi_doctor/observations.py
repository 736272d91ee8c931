"""What the signals see, as the rules read it: typed observations, and where a signal hands one.

An observation is a frozen dataclass of numbers, names and :class:`Location`s (no frames, no requests,
no threads) made by a signal (or the kernel) once it has taken the noise off. The signal hands it to
``agent.report`` (:data:`Report`); :mod:`fastapi_doctor.diagnosis` routes it to every rule that
declares its type (``DECIDES`` in a rule module), which applies its thresholds and writes the
finding. Signals and the kernel import this module, never a rule: a new root cause that decides an
observation already made here needs no signal edited (docs/design.md, "How to add a root cause").

Grouped by the root cause that first decided each; any rule may decide any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi_doctor.kernel.location import Location

# How a BlockingCall was seen: both are facts (the call happened on the loop), not durations.
CALL_INTERCEPTION = "call_interception"  # intercepted (blockbuster, under pytest --doctor)
SYNC_STATEMENT_ON_LOOP = "sync_statement_on_loop"  # a statement sent through a sync SQLAlchemy dialect on the loop


class Report(Protocol):
    """Where a signal hands an observation (``agent.report``): every rule that decides its type
    decides it, and their verdicts are published. True when one of them made a finding."""

    def __call__(self, observation: object, /) -> bool: ...


# -- blocking_io -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoopBlock:
    """One block of the event loop, with what the watchdog's samples agree on."""

    root_cause: str  # blocking_io, or large_payload (serialising) / slow_middleware (in a middleware)
    call: str | None  # the blocking call in the app's line, when known
    middleware: str | None
    location: Location
    method: str | None
    route: str | None
    in_request: bool
    blocked_s: float
    max_blocked_ms: float  # of this line's blocks so far
    episodes: int  # this line's blocks so far
    samples: int  # samples on this line
    samples_total: int
    threshold_s: float
    # This line's first block, handed again with its second (the eventloop signal keeps it): a rule
    # that does not take one block alone as a problem decides it then.
    first: LoopBlock | None = None


@dataclass(frozen=True, slots=True)
class BlockingCall:
    """A blocking function called on the loop inside a request, from the app's line."""

    call: str
    blocking_function: str
    detected_by: str
    location: Location
    method: str | None
    route: str | None


@dataclass(frozen=True, slots=True)
class ThreadpoolSaturated:
    """Every thread of anyio's threadpool busy for ``saturated_s`` while up to ``waiting`` tasks waited."""

    limit: int
    busy: int
    waiting: int
    saturated_s: float
    holders: tuple[tuple[str, str, int], ...]  # (method, route, threads held), most first
    call: str | None  # the call most threads were in
    location: Location | None
    threads_in_call: int
    threads_waiting_for_a_connection: int


@dataclass(frozen=True, slots=True)
class HeldAcrossCall:
    """A saturated database pool whose connections are held by threads waiting in one call elsewhere."""

    call: str | None
    location: Location
    threads_in_call: int  # on average over the saturation's rounds
    saturated: PoolSaturated


# -- dependency_rebuild ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectBuilt:
    """An object of ``label`` built inside a request, the ``count``-th time by this line."""

    label: str  # e.g. httpx.AsyncClient (a key of COSTS)
    location: Location | None  # the user's line that built it
    dependency: str | None  # the dependency it was built in
    count: int
    method: str | None
    route: str | None
    details: dict[str, Any] = field(default_factory=dict)  # e.g. {"pool": ...}: evidence, and words of COSTS
    routes: tuple[str, ...] = ()  # "METHOD /template" of every route that built it at this line, most first


@dataclass(frozen=True, slots=True)
class SameComputation:
    """A sync dependency computed from the same plain inputs, the ``count``-th time."""

    dependency: str
    location: Location | None
    cpu_s: float  # its own CPU time on this build
    count: int
    method: str | None
    route: str | None


# -- pool_leak -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    """Connections of a pool checked out now by one route and line."""

    route: str | None
    location: Location | None
    connections: int
    oldest_age_s: float


@dataclass(frozen=True, slots=True)
class CheckoutHeld:
    """One connection not returned in time (``reason``: garbage_collected, request_finished, held_too_long)."""

    pool: str
    reason: str
    age_s: float
    location: Location | None  # where it was checked out
    method: str | None
    route: str | None  # the route whose connections leaked most at this line
    occupancy: dict[str, Any] = field(default_factory=dict)  # the pool's state now
    routes: tuple[str, ...] = ()  # "METHOD /template" of every route that leaked at this line, most first


@dataclass(frozen=True, slots=True)
class CheckoutTimedOut:
    """A checkout that waited ``waited_s`` on an exhausted pool and timed out."""

    pool: str
    waited_s: float
    location: Location | None  # where the checkout failed
    method: str | None
    route: str | None
    holders: tuple[Holder, ...]  # most connections first
    occupancy: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AcquiresWaited:
    """Of the last ``acquires`` acquires of an asyncpg pool, ``waits`` found it full and waited."""

    pool: str
    max_connections: int
    waits: int
    acquires: int
    wait_p50_s: float
    location: Location | None  # the waiting acquire's line
    method: str | None
    route: str | None
    holders: tuple[Holder, ...]
    occupancy: dict[str, Any] = field(default_factory=dict)
    # The share of wall time the pool's event loop thread was on a CPU or waiting for one while they
    # waited (None: unknown), and the seconds it was measured over.
    loop_busy: float | None = None
    loop_measured_s: float = 0.0
    leaked: int = 0  # connections held by checkouts already reported as leaks


@dataclass(frozen=True, slots=True)
class PoolSaturated:
    """Every connection of a pool in use for ``saturated_s`` while up to ``waiting`` callers waited."""

    pool: str
    pool_size: int
    max_overflow: int
    max_connections: int
    checked_out: int
    waiting: int
    saturated_s: float
    threads_waiting: int  # worker threads waiting for a connection now
    holders: tuple[Holder, ...]
    # Callers waiting for a connection, averaged over the episode's rounds (None: not measured).
    mean_waiting: float | None = None
    # The process's CPU time and wait for a CPU per second of the episode, in cores (None: unknown),
    # and the CPUs it may run on.
    cpu_busy: float | None = None
    cpus: int | None = None
    # For a pool serving one event loop (asyncpg's): the share of the episode's wall time its loop
    # thread was on a CPU or waiting for one (None: unknown, or not such a pool).
    loop_busy: float | None = None
    leaked: int = 0  # connections held by checkouts already reported as leaks


# -- slow_middleware -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerWindow:
    """A layer's recent self-times, over every route (``route`` and ``method`` None) or one route's."""

    middleware: str
    location: Location | None  # its dispatch / __call__
    method: str | None
    route: str | None
    requests: int  # timed in all
    window: int  # requests the medians are of
    flagged: int  # of those, requests where it alone was slow
    self_time_p50_s: float
    share_p50: float  # of the request's duration
    other_routes_fast: bool  # some route seen does not pay it (for a route's window)


# -- large_payload ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseWindow:
    """The medians (p50) of one method and route's last responses."""

    method: str
    route: str | None
    location: Location | None  # the endpoint
    responses: int  # seen in all
    window: int  # in the window the medians are of
    p50_bytes: float  # sent
    p50_exposed_bytes: float  # sent uncompressed to clients that accept gzip (0 for the others)
    serialize_p50_s: float
    serialize_share_p50: float  # of the request's duration
    compression_middleware: bool  # a compression middleware saw the route's responses
    content_encoding: str  # of the last response


# -- n_plus_one ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepeatedStatement:
    """One statement fingerprint's executions in one finished request."""

    fingerprint: str
    executions: int
    location: Location | None  # the user's line that runs it again and again
    statements_in_request: int
    distinct_statements: int
    method: str | None
    route: str | None


# -- task_leak -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreatorObservation:
    """One creator of tasks (the user's coroutine and the line that created it), at one moment.

    Counters (``created``, ``outlived``, ``aged``, ``destroyed_pending``, ``never_retrieved``) only
    grow; ``alive`` and ``oldest_age_s`` are read now over the tasks still pending after their request
    (or created outside any request).
    """

    coroutine: str
    location: Location | None
    created: int
    alive: int
    oldest_age_s: float
    outlived: int  # tasks still pending when the request that created them finished
    aged: int  # of those, tasks that were still pending task_leak_seconds after that
    destroyed_pending: int
    never_retrieved: int
    growth_per_minute: float
    method: str | None  # the request that created most of the tasks that outlived it
    route: str | None
    routes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CreatorCounted:
    """One creator's tasks as counted in a cycle of the tasks signal, beside its previous count."""

    now: CreatorObservation
    before: CreatorObservation | None  # at the creator's previous cycle (None: its first)
    leak_seconds: float  # the limit this count used ("aged"; 0 when a test's requests are over)
