"""The raw-asyncpg app with every part of the asyncpg signal forced to fail: its responses must not change."""

from asyncpg_app import app  # noqa: F401

from fastapi_doctor.kernel import rebuilds
from fastapi_doctor.signals.database import asyncpg_pool, db_queries


def broken(*args, **kwargs):
    raise RuntimeError("forced failure inside the asyncpg signal")


for name in ("acquired", "on_checkin"):
    setattr(asyncpg_pool.AsyncpgPoolTracker, name, broken)
db_queries.QueryCounter.on_statement = broken
rebuilds.RebuildSites.created = broken
