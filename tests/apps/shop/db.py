"""A SQLAlchemy engine and a per-request session, as in FastAPI's SQL tutorial."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

engine = create_engine("sqlite://", connect_args={"check_same_thread": False})
SessionLocal = sessionmaker(bind=engine)

# A report query that scans a million rows (about 0.3 s on SQLite).
AUDIT_QUERY = text(
    "WITH RECURSIVE rows(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM rows WHERE n < 1000000) SELECT count(*) FROM rows"
)


def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()
