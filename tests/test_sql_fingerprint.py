"""Statement fingerprints (N+1 detection, the slow-query log) for the statements real drivers send:
psycopg's ``%(name)s`` and ``%s``, asyncpg's ``$1``, sqlite's ``?``, ``:name``, PostgreSQL casts,
lists of any length, and literals holding what looks like SQL."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapi_doctor.sql import fingerprint


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        # SQLAlchemy on psycopg: a UUID primary key is cast
        ("SELECT items.id, items.name FROM items WHERE items.id = %(pk_1)s::UUID",
         "SELECT items.id, items.name FROM items WHERE items.id = ?::UUID"),
        # asyncpg
        ("SELECT * FROM t WHERE id = $1::int AND code = $2::varchar(36)",
         "SELECT * FROM t WHERE id = ?::int AND code = ?::varchar(36)"),
        ("SELECT CAST(%(x)s AS UUID), CAST(:y AS numeric(10, 2)), t.x::text FROM t",
         "SELECT CAST(? AS UUID), CAST(? AS numeric(10, 2)), t.x::text FROM t"),
        ("SELECT * FROM t WHERE a = %s AND b = :name AND c = ? AND d = $3",
         "SELECT * FROM t WHERE a = ? AND b = ? AND c = ? AND d = ?"),
        # lists and arrays fold to one item, whatever their length
        ("SELECT * FROM t WHERE id IN (?, ?, ?)", "SELECT * FROM t WHERE id IN (?)"),
        ("SELECT * FROM t WHERE id IN (%(id_1_1)s::UUID, %(id_1_2)s::UUID)",
         "SELECT * FROM t WHERE id IN (?::UUID)"),
        ("SELECT * FROM t WHERE id = ANY($1::int[]) OR id = ANY(ARRAY[1, 2, 3])",
         "SELECT * FROM t WHERE id = ANY(?::int[]) OR id = ANY(ARRAY[?])"),
        ("INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)", "INSERT INTO t (a, b) VALUES (?)"),
        # literals: what is inside a string is a value, whatever it looks like
        ("SELECT '--x::y ? :z /*' AS s, 'it''s' FROM t", "SELECT ? AS s, ? FROM t"),
        ("SELECT E'a\\'b', $$ :x -- $$, $fn$ ? $fn$ FROM t", "SELECT ?, ?, ? FROM t"),
        # comments go; names keep their digits; a slice and a % stay what they are
        ("SELECT a -- why :x\nFROM t1 /* ?::int */ WHERE t1.col2 = -5 AND x-1 > 2.5e3",
         "SELECT a FROM t1 WHERE t1.col2 = ? AND x-? > ?"),
        ('SELECT a[1:3], x %% 2 FROM "Order:1" WHERE "col 2" = 7',
         'SELECT a[?:?], x %% ? FROM "Order:1" WHERE "col 2" = ?'),
    ],
)
def test_fingerprint_keeps_the_shape_and_drops_the_values(statement: str, expected: str) -> None:
    assert fingerprint(statement) == expected


_PARAMS = st.sampled_from(["%(p_1)s", "%s", "$1", ":p", "?"])
_CASTS = st.sampled_from(["", "::UUID", "::int[]", "::varchar(36)"])
_VALUES = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20).map(
        lambda s: "'" + s.replace("'", "''") + "'"
    ),
)


@given(param=_PARAMS, cast=_CASTS, n=st.integers(1, 50))
def test_a_list_of_any_length_has_one_fingerprint(param: str, cast: str, n: int) -> None:
    items = ", ".join([param + cast] * n)
    assert fingerprint(f"SELECT * FROM items WHERE id IN ({items})") == f"SELECT * FROM items WHERE id IN (?{cast})"


@given(first=_VALUES, second=_VALUES, param=_PARAMS, cast=_CASTS)
def test_no_value_reaches_the_fingerprint(first: str, second: str, param: str, cast: str) -> None:
    template = "SELECT t1.a FROM t1 WHERE t1.b = {} AND t1.c = {param}{cast} -- a note\nORDER BY 1"
    one = fingerprint(template.format(first, param=param, cast=cast))
    two = fingerprint(template.format(second, param=param, cast=cast))
    assert one == two == f"SELECT t1.a FROM t1 WHERE t1.b = ? AND t1.c = ?{cast} ORDER BY ?"


@given(st.text(max_size=200))
def test_a_fingerprint_is_its_own_fingerprint(statement: str) -> None:
    once = fingerprint(statement)
    assert fingerprint(once) == once
