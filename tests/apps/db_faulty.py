"""The db app with every part of the db signal forced to fail: its responses must not change."""

from db_app import app  # noqa: F401

from fastapi_doctor.signals.database import db_pool, db_queries


def broken(*args, **kwargs):
    raise RuntimeError("forced failure inside the db signal")


for name in ("add_engine", "stats_for", "on_connect", "on_checkout", "on_checkin"):
    setattr(db_pool.PoolTracker, name, broken)
db_queries.QueryCounter.on_statement = broken
