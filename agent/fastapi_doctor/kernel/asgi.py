"""The ``.app`` chain of a built ASGI stack: walk it, and take a wrapper out of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_MAX_DEPTH = 64


def walk(stack: Any) -> Iterator[tuple[Any, Any]]:
    """(parent, layer) along the ``.app`` chain of a built stack; parent is None for the top."""
    parent = None
    seen: set[int] = set()
    depth = 0
    while stack is not None and id(stack) not in seen and depth < _MAX_DEPTH:
        seen.add(id(stack))
        yield parent, stack
        parent, stack = stack, getattr(stack, "app", None)
        depth += 1


def splice_out(parent: Any, wrapper: Any) -> bool:
    """Take ``wrapper`` out of the ``.app`` chain below ``parent`` (other wrappers may sit between)."""
    node = parent
    for _ in range(_MAX_DEPTH):
        inner = getattr(node, "app", None)
        if inner is None:
            return False
        if inner is wrapper:
            node.app = wrapper.app
            return True
        node = inner
    return False
