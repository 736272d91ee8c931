"""``db.client.operation.duration``: the conventions' histogram of the time a statement spends in the driver.

Fed by :mod:`fastapi_doctor.signals.database.db`, which wraps the dialects' ``do_execute`` methods (the
driver call of every statement SQLAlchemy sends, sync and async engines alike). Attributes as the
semantic conventions: ``db.system.name``, ``db.operation.name`` (the statement's first keyword when it is
one of :data:`OPERATIONS`; an ``executemany`` is one ``BATCH`` operation), ``db.namespace`` (the
database's name, for a server database), ``server.address`` / ``server.port`` from the engine's URL, and
``error.type`` (the driver's exception class) when the statement failed. Never ``http.route`` nor the
statement's text: the series are per engine and operation (docs/metrics.md).
"""

from __future__ import annotations

from typing import Any

from fastapi_doctor.kernel.metrics import histogram

# The conventions' advice for db.client.operation.duration.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

# SQLAlchemy's dialect name -> the conventions' db.system.name.
SYSTEMS = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "mssql": "microsoft.sql_server",
    "oracle": "oracle.db",
}
# Statement keywords taken as db.operation.name (a bounded set: anything else has none).
OPERATIONS = frozenset(
    "SELECT INSERT UPDATE DELETE MERGE REPLACE UPSERT CALL EXEC EXECUTE CREATE ALTER DROP TRUNCATE BEGIN "
    "COMMIT ROLLBACK SAVEPOINT RELEASE SET SHOW PRAGMA VACUUM ANALYZE EXPLAIN COPY LOCK GRANT REVOKE".split()
)
_MAX_STATEMENTS = 1000  # statements remembered per engine (their attributes); beyond, computed per call
_ATTRIBUTES = "_fastapi_doctor_operation_attributes"  # on a dialect (one per engine): statement -> attributes


class OperationDurations:
    def __init__(self, agent: Any) -> None:
        self.duration = histogram(
            agent,
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            boundaries=BUCKETS,
        )
        self._failed: dict[tuple[int, type], tuple[dict[str, Any], dict[str, Any]]] = {}

    def attributes(self, context: Any, statement: str, many: bool) -> dict[str, Any]:
        """The attributes of ``statement`` on ``context``'s engine (the same dict for the same statement)."""
        dialect = context.dialect
        known: dict[tuple[str, bool], dict[str, Any]] | None = getattr(dialect, _ATTRIBUTES, None)
        if known is None:
            known = {}
            setattr(dialect, _ATTRIBUTES, known)
        attrs = known.get((statement, many))
        if attrs is None:
            attrs = self._attributes(context, statement, many)
            if len(known) < _MAX_STATEMENTS:
                known[(statement, many)] = attrs
        return attrs

    def failed(self, attrs: dict[str, Any], exc: BaseException) -> dict[str, Any]:
        """``attrs`` with the failure's ``error.type`` (the same dict for the same attributes and class)."""
        kind = type(exc)
        known = self._failed.get((id(attrs), kind))
        if known is not None and known[0] is attrs:
            return known[1]
        failed = {**attrs, "error.type": f"{kind.__module__}.{kind.__qualname__}"}
        if len(self._failed) < _MAX_STATEMENTS:
            self._failed[(id(attrs), kind)] = (attrs, failed)  # holding attrs keeps its id from being reused
        return failed

    @staticmethod
    def _attributes(context: Any, statement: str, many: bool) -> dict[str, Any]:
        url = context.engine.url
        name = context.dialect.name
        attrs: dict[str, Any] = {"db.system.name": SYSTEMS.get(name, "other_sql")}
        words = statement[:40].split(None, 1)
        keyword = words[0].upper() if words else ""
        if keyword in OPERATIONS:
            attrs["db.operation.name"] = f"BATCH {keyword}" if many else keyword
        elif many:
            attrs["db.operation.name"] = "BATCH"
        if url.host:
            if url.database:
                attrs["db.namespace"] = url.database
            attrs["server.address"] = url.host
            if url.port:
                attrs["server.port"] = url.port
        return attrs
