"""The repository layer of the raw-asyncpg app: plain async functions taking a pool or a connection."""

from __future__ import annotations

from typing import Any

import asyncpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id SERIAL PRIMARY KEY, email TEXT UNIQUE NOT NULL, password_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS authors (id SERIAL PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS articles (id SERIAL PRIMARY KEY, title TEXT NOT NULL,
                                     author_id INTEGER NOT NULL REFERENCES authors (id));
CREATE TABLE IF NOT EXISTS tags (article_id INTEGER NOT NULL REFERENCES articles (id), tag TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS comments (id SERIAL PRIMARY KEY, article_id INTEGER NOT NULL REFERENCES articles (id),
                                     body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS favorites (article_id INTEGER NOT NULL REFERENCES articles (id), user_id INTEGER NOT NULL);
"""


async def create_schema(con: asyncpg.Connection, *, articles: int, password_hash: str) -> None:
    async with con.transaction():
        await con.execute(SCHEMA)
        await con.execute("TRUNCATE favorites, comments, tags, articles, authors, users RESTART IDENTITY")
        await con.execute("INSERT INTO users (email, password_hash) VALUES ($1, $2)", "reader@example.com", password_hash)
        await con.executemany("INSERT INTO authors (name) VALUES ($1)", [(f"author {i}",) for i in range(1, 6)])
        await con.executemany(
            "INSERT INTO articles (title, author_id) VALUES ($1, $2)",
            [(f"article {i}", i % 5 + 1) for i in range(1, articles + 1)],
        )
        await con.executemany("INSERT INTO tags (article_id, tag) VALUES ($1, $2)",
                              [(i, t) for i in range(1, articles + 1) for t in ("python", "sql")])
        await con.executemany("INSERT INTO comments (article_id, body) VALUES ($1, $2)",
                              [(i, "nice") for i in range(1, articles + 1)])


async def user_by_id(pool: asyncpg.Pool, user_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT id, email FROM users WHERE id = $1", user_id)


async def list_articles(con: Any, limit: int) -> list[asyncpg.Record]:
    return await con.fetch("SELECT id, title, author_id FROM articles ORDER BY id LIMIT $1", limit)


async def author_name(con: Any, author_id: int) -> str:
    return await con.fetchval("SELECT name FROM authors WHERE id = $1", author_id)


async def tags_of(con: Any, article_id: int) -> list[str]:
    return [r["tag"] for r in await con.fetch("SELECT tag FROM tags WHERE article_id = $1 ORDER BY tag", article_id)]


async def comment_count(con: Any, article_id: int) -> int:
    return await con.fetchval("SELECT count(*) FROM comments WHERE article_id = $1", article_id)


async def favorited(con: Any, article_id: int, user_id: int) -> bool:
    return await con.fetchval("SELECT EXISTS (SELECT 1 FROM favorites WHERE article_id = $1 AND user_id = $2)",
                              article_id, user_id)


async def article_feed(con: Any, limit: int, user_id: int) -> list[asyncpg.Record]:
    """The same page in one statement."""
    return await con.fetch(
        """
        SELECT a.id, a.title, au.name AS author,
               COALESCE((SELECT array_agg(t.tag ORDER BY t.tag) FROM tags t WHERE t.article_id = a.id), '{}') AS tags,
               (SELECT count(*) FROM comments c WHERE c.article_id = a.id) AS comments,
               EXISTS (SELECT 1 FROM favorites f WHERE f.article_id = a.id AND f.user_id = $2) AS favorited
        FROM articles a JOIN authors au ON au.id = a.author_id
        ORDER BY a.id LIMIT $1
        """,
        limit, user_id,
    )


async def article_count(con: Any) -> int:
    return await con.fetchval("SELECT count(*) FROM articles")


async def tag_names(con: Any) -> list[str]:
    return [r["tag"] for r in await con.fetch("SELECT DISTINCT tag FROM tags ORDER BY tag")]


async def tagged_count(con: Any, tag: str) -> int:
    return await con.fetchval("SELECT count(*) FROM tags WHERE tag = $1", tag)
