"""Nothing secret leaves the process: spans are redacted on their way to the exporter.

Redaction runs in the export thread (never on the app's path) and only copies a span that needs a
change. What it does, for every span of every instrumentation (FastAPI's own, contrib's, the app's):

* ``url.query``: every value becomes ``REDACTED``, the keys stay (FastAPI's native telemetry puts the
  values there, redacting only a few cloud signature keys). ``url.full``, ``http.url``,
  ``http.target``: the same for their query part, and the password of ``user:password@``.
* any other text attribute: the password of a ``scheme://user:password@host`` URL.
* ``db.statement`` / ``db.query.text``: the statement's fingerprint (every literal value removed).
* ``http.request.header.*`` / ``http.response.header.*``: the value is redacted unless the header is
  in :data:`HEADER_ALLOW_LIST`.
* exception events: ``exception.message`` is removed and ``exception.stacktrace`` is cut down to its
  code locations (file, line, function); the span status keeps its code but not its description.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "REDACTED"

# Header values safe to keep when an instrumentation was told to capture headers.
HEADER_ALLOW_LIST = frozenset(
    {"accept", "accept-encoding", "content-encoding", "content-length", "content-type", "user-agent"}
)

_QUERY_KEYS = frozenset({"url.query"})
_URL_KEYS = frozenset({"url.full", "http.url", "http.target", "url.original"})
_STATEMENT_KEYS = frozenset({"db.statement", "db.query.text"})
_HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/@:\s]*):([^/@\s]+)@")
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+, in .*$', re.M)

redact_query_values = True


def configure(*, query_values: bool) -> None:
    global redact_query_values
    redact_query_values = query_values


def redact_query(query: str) -> str:
    """``a=1&token=x&flag`` -> ``a=REDACTED&token=REDACTED&flag``."""
    if not redact_query_values:
        return query
    parts = []
    for part in query.split("&"):
        key, eq, _ = part.partition("=")
        parts.append(f"{key}={REDACTED}" if eq else part)
    return "&".join(parts)


def redact_url(url: str) -> str:
    url = _CREDENTIALS.sub(rf"\1\2:{REDACTED}@", url)
    base, q, rest = url.partition("?")
    if not q:
        return url
    query, hash_, _fragment = rest.partition("#")
    return base + "?" + redact_query(query) + (hash_ + REDACTED if hash_ else "")


def _fingerprint(statement: str) -> str:
    from fastapi_doctor.sql import fingerprint

    return fingerprint(statement)


def _stack_locations(stacktrace: str) -> str:
    return "\n".join(m.group(0).strip() for m in _FRAME.finditer(stacktrace))


def _value(key: str, value: Any) -> Any:
    if key in _QUERY_KEYS and isinstance(value, str):
        return redact_query(value)
    if key in _URL_KEYS and isinstance(value, str):
        return redact_url(value)
    if key in _STATEMENT_KEYS and isinstance(value, str):
        return _fingerprint(value)
    if key.startswith(_HEADER_PREFIXES):
        name = key.split(".", 3)[3] if key.count(".") >= 3 else ""
        if name.replace("_", "-").lower() not in HEADER_ALLOW_LIST:
            return (REDACTED,) if isinstance(value, (list, tuple)) else REDACTED
        return value
    if isinstance(value, str) and "@" in value and "://" in value:
        return _CREDENTIALS.sub(rf"\1\2:{REDACTED}@", value)
    return value


def attributes(attrs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Redacted copy of ``attrs``, or None when nothing needs a change."""
    if not attrs:
        return None
    changed: dict[str, Any] | None = None
    for key, value in attrs.items():
        new = _value(key, value)
        if new is not value and new != value:
            if changed is None:
                changed = dict(attrs)
            changed[key] = new
    return changed


def _event_attributes(name: str, attrs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    changed = attributes(attrs)
    if name != "exception" or not attrs:
        return changed
    out = dict(changed if changed is not None else attrs)
    out.pop("exception.message", None)
    if isinstance(out.get("exception.stacktrace"), str):
        out["exception.stacktrace"] = _stack_locations(out["exception.stacktrace"])
    return out if out != dict(attrs) else changed


def span(s: Any) -> Any:
    """The span itself when it carries nothing to redact, else a redacted copy."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import Status

    new_attrs = attributes(s.attributes)
    new_events: list[Any] | None = None
    for i, event in enumerate(s.events):
        attrs = _event_attributes(event.name, event.attributes)
        if attrs is not None:
            if new_events is None:
                new_events = list(s.events)
            new_events[i] = Event(event.name, attrs, event.timestamp)
    status = s.status
    new_status = Status(status.status_code) if status is not None and status.description else None
    if new_attrs is None and new_events is None and new_status is None:
        return s
    return ReadableSpan(
        name=s.name,
        context=s.context,
        parent=s.parent,
        resource=s.resource,
        attributes=new_attrs if new_attrs is not None else s.attributes,
        events=new_events if new_events is not None else s.events,
        links=s.links,
        kind=s.kind,
        status=new_status if new_status is not None else status,
        start_time=s.start_time,
        end_time=s.end_time,
        instrumentation_scope=s.instrumentation_scope,
    )


def spans(batch: Sequence[Any]) -> list[Any]:
    return [span(s) for s in batch]
