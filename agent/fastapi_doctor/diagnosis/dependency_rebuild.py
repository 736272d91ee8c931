"""``dependency_rebuild``: an object meant to be built once, built again in every request.

Decided on the building, never on a duration: an engine, a connection pool, an HTTP client, a session
factory or a settings object built inside requests by the same line ``REBUILD_REPEATS`` times (once in a
test suite, where a request is made once), or a sync dependency that computes the same result from the
same plain inputs again and again. A slow dependency is not evidence of a rebuild (it may be waiting for
the pool, the loop or a remote service); objects built at start-up are built once and never count.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi_doctor.diagnosis import Decides, Verdict, verdict_on
from fastapi_doctor.observations import ObjectBuilt, SameComputation

if TYPE_CHECKING:
    from fastapi_doctor.config import Settings

ROOT_CAUSE = "dependency_rebuild"
TITLE = "Dependencies rebuilt per request"
REBUILD_REPEATS = 3  # objects built in requests from the same line before it is a finding


def basis(evidence: dict[str, Any]) -> str:
    """``timing`` for a dependency slower than its threshold (``p50_ms``); ``fact`` for objects built again."""
    return "timing" if "p50_ms" in evidence else "fact"

_CLIENT_POOL = "each one builds its own connection pool (and TLS context), so connections are never reused."
_DATABASE_POOL = "each one opens its own connections to the database (TCP, TLS, authentication), so none is reused."
# What building one per request costs, by the object's label (the signals' names for what they watch).
COSTS = {
    "httpx.Client": _CLIENT_POOL,
    "httpx.AsyncClient": _CLIENT_POOL,
    "aiohttp.ClientSession": _CLIENT_POOL,
    "requests.Session": _CLIENT_POOL,
    "sqlalchemy.orm.sessionmaker": (
        "each one makes a new Session class (and its configuration) where one factory made at start-up serves all."
    ),
    "sqlalchemy.ext.asyncio.async_sessionmaker": (
        "each one makes a new session factory where one made at start-up serves all."
    ),
    "pydantic_settings.BaseSettings": (
        "each one reads the environment and parses its env files again and validates every field."
    ),
    "sqlalchemy.engine.Engine": "each one builds a new connection pool (pool {pool}) and opens new database connections.",
    "databases.Database": _DATABASE_POOL,
    "asyncpg.Pool": _DATABASE_POOL,
    "asyncpg.Connection": (
        "each request pays a new connection's TCP, TLS and authentication handshake, and none is reused; acquire "
        "from a pool made at start-up (asyncpg.create_pool in lifespan) instead."
    ),
}


def decides(settings: Settings) -> Decides:
    # In a test suite a request is made once: one object built inside it is already the fact.
    repeats = 1 if settings.test_mode else REBUILD_REPEATS
    return {
        ObjectBuilt: functools.partial(decide_built, repeats=repeats),
        SameComputation: functools.partial(decide_computed, repeats=repeats),
    }


def decide_built(built: ObjectBuilt, *, repeats: int = REBUILD_REPEATS) -> Verdict | None:
    if built.count < repeats:
        return None
    inside = f" in dependency {built.dependency}" if built.dependency else ""
    why = COSTS.get(built.label, "it is meant to be built once.").format(**built.details)
    evidence = {
        "object": built.label,
        "created_in_requests": built.count,
        "dependency": built.dependency,
        **built.details,
    }
    several = len(built.routes) > 1
    if several:
        evidence["routes"] = list(built.routes)
    verdict = verdict_on(
        built,
        root_cause=ROOT_CAUSE,
        summary=(
            f"A new {built.label} is built inside requests{inside} "
            f"({built.count} so far{f', on {len(built.routes)} routes' if several else ''}): {why} "
            "Build it once at start-up (lifespan, a module-level object, functools.lru_cache) and share it."
        ),
        evidence=evidence,
    )
    return replace(verdict, per_line=True)


def decide_computed(computed: SameComputation, *, repeats: int = REBUILD_REPEATS) -> Verdict | None:
    if computed.count < repeats:
        return None
    cpu_ms = round(computed.cpu_s * 1000.0, 1)
    return verdict_on(
        computed,
        root_cause=ROOT_CAUSE,
        summary=(
            f"Dependency {computed.dependency} computes the same result in every request: {cpu_ms} ms of its own "
            f"CPU time per build, on the same inputs, {computed.count} times so far. Compute it once "
            "(functools.lru_cache, or at start-up in the lifespan) and reuse it."
        ),
        evidence={
            "computation": computed.dependency,
            "cpu_ms": cpu_ms,
            "same_inputs": computed.count,
            "dependency": computed.dependency,
        },
    )
