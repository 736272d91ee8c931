"""The database signals, one family: SQLAlchemy (``db``) and asyncpg (``asyncpg_pool``) feed one pool
tracker (``db_pool``) and one statement counter (``db_queries``). Other signals do not import it."""
