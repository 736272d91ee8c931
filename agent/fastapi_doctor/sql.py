"""SQL statement fingerprints (the statement's shape with every literal value removed) and pool names.

Used for N+1 detection and the slow-query log; a fingerprint never carries a parameter value.

One scan from left to right reads the statement as tokens, so a token is read in its context: a
string literal keeps the ``--``, ``::`` or ``?`` inside it from reading as a comment, a cast or a
parameter; a PostgreSQL cast (``%(pk)s::UUID``, ``$1::int``) is not a ``:name`` parameter; a digit
inside a name (``t1.col2``) is not a number. Then lists of any length fold to one item.
"""

from __future__ import annotations

import functools
import re
from typing import Any

# Alternatives are tried in order at each position; the first that matches is the token.
_TOKEN = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<literal>
          [Ee]'(?:[^'\\]|''|\\.)*'                     # E'...' (backslash escapes)
        | '(?:[^']|'')*'                               # standard string ('' is a quote)
        | \$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$  # PostgreSQL dollar-quoted string
      )
    | (?P<keep>
          "(?:[^"]|"")*"                               # quoted identifier
        | `[^`]*`                                      # MySQL quoted identifier
        | ::\s*[A-Za-z_][\w.]*(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?(?:\[\d*\])*  # a cast (::varchar(36))
        | (?i:\bAS\s+[A-Za-z_]\w*\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))  # CAST(... AS numeric(10, 2))
        | %%                                           # a literal % in pyformat statements
        | [A-Za-z_][\w$]*                              # a name: its digits are not numbers
      )
    | (?P<param>%\(\w+\)s|%s|\$\d+|(?<![\w)\]]):\w+|\?)  # not a[1:3]
    | (?P<number>(?:(?<![\w)\]])-)?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<space>\s+)
    """,
    re.S | re.X,
)

# A placeholder, with the cast it may carry (?::UUID, ?::int[], ?::varchar(36)).
_ITEM = r"\?(?:::[\w.]+(?: ?\(\d+(?: ?, ?\d+)?\))?(?:\[\d*\])*)?"
_LIST = re.compile(rf"\( ?({_ITEM})(?: ?, ?{_ITEM})+ ?\)")
_ARRAY = re.compile(rf"\b(ARRAY ?)\[ ?({_ITEM})(?: ?, ?{_ITEM})+ ?\]", re.I)
_ROW = rf"\({_ITEM}\)"
_VALUES = re.compile(rf"\b(VALUES ?)({_ROW})(?: ?, ?{_ROW})+", re.I)


def _token(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "keep" or kind is None:
        return match.group()
    if kind == "comment" or kind == "space":
        return " "
    return "?"  # a literal, a parameter, a number


@functools.lru_cache(maxsize=2048)
def fingerprint(statement: str) -> str:
    """``SELECT * FROM t WHERE id = 5 AND name = 'x'`` -> ``SELECT * FROM t WHERE id = ? AND name = ?``."""
    text = " ".join(_TOKEN.sub(_token, statement).split())
    text = _LIST.sub(r"(\1)", text)
    text = _ARRAY.sub(r"\1[\2]", text)
    text = _VALUES.sub(r"\1\2", text)
    return text[:1000]


def pool_name(url: Any) -> str:
    """A stable pool name without credentials or query: ``postgresql://127.0.0.1:5432/app``."""
    backend = url.get_backend_name()
    host = url.host or ""
    if host and url.port:
        host = f"{host}:{url.port}"
    database = url.database or ""
    if host:
        return f"{backend}://{host}/{database}"
    return f"{backend}:///{database}" if database else f"{backend}://"
