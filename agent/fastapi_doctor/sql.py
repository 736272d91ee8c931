"""SQL statement fingerprints: the statement's shape with every literal value removed.

Used for N+1 detection and the slow-query log; a fingerprint never carries a parameter value.
"""

from __future__ import annotations

import functools
import re

_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w$.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", re.I)
_PARAM = re.compile(r"%\(\w+\)s|%s|\$\d+|:\w+|\?")
_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")
_VALUES = re.compile(r"(VALUES\s*)\(\s*\?(?:\s*,\s*\?)*\s*\)(?:\s*,\s*\(\s*\?(?:\s*,\s*\?)*\s*\))+", re.I)
_SPACE = re.compile(r"\s+")


@functools.lru_cache(maxsize=2048)
def fingerprint(statement: str) -> str:
    """``SELECT * FROM t WHERE id = 5 AND name = 'x'`` -> ``SELECT * FROM t WHERE id = ? AND name = ?``."""
    text = _COMMENT.sub(" ", statement)
    text = _STRING.sub("?", text)
    text = _PARAM.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = _LIST.sub("(?)", text)
    text = _VALUES.sub(r"\1(?)", text)
    text = _SPACE.sub(" ", text).strip()
    return text[:1000]
