"""``large_payload``: responses too large to send uncompressed, or too costly to encode.

Decided per method and route over the window of its last responses (the responses signal flags one
that is sent uncompressed above ``large_response_bytes`` to a client that accepts gzip, or whose
serialisation is more than half of the request and at least ``SHARE_FLOOR_S``; the window says when
half of them are flagged). A serialisation that blocks the event loop is decided by the loop
watchdog's rule (:mod:`fastapi_doctor.diagnosis.blocking_io`) with this root cause's summary
(:func:`loop_block_summary`).

Not findings: a large response compressed, sent to a client that does not accept gzip, or of a type
that does not compress (images, archives).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from fastapi_doctor.diagnosis import Decides, Verdict, ms, verdict_on
from fastapi_doctor.observations import ResponseWindow

if TYPE_CHECKING:
    from fastapi_doctor.config import Settings

ROOT_CAUSE = "large_payload"
TITLE = "Large uncompressed responses"


def basis(evidence: dict[str, Any]) -> str:
    """``fact`` when clients that accept gzip got uncompressed bodies over the threshold; ``timing`` for
    slow serialisation."""
    exposed = evidence.get("p50_uncompressed_bytes_to_gzip_clients") or 0
    return "fact" if exposed > evidence.get("threshold_bytes", 0) else "timing"


def decides(settings: Settings) -> Decides:
    return {ResponseWindow: functools.partial(decide, large_bytes=settings.large_response_bytes)}


def decide(seen: ResponseWindow, *, large_bytes: int) -> Verdict:
    large = seen.p50_exposed_bytes > large_bytes
    endpoint = f"{seen.method} {seen.route}" if seen.route else "(no route)"
    if large:
        fix = (
            "the compression middleware did not compress it (check its minimum size and media types)"
            if seen.compression_middleware
            else "no compression middleware is installed: add GZipMiddleware"
        )
        summary = (
            f"{endpoint} sends {size_text(seen.p50_exposed_bytes)} uncompressed to clients that accept gzip (p50 "
            f"of the last {seen.window} responses); {fix}, or send less (pagination, fewer fields)."
        )
    else:
        summary = (
            f"Serialising the response of {endpoint} takes {ms(seen.serialize_p50_s)} ms, "
            f"{seen.serialize_share_p50:.0%} of the request (p50 of the last {seen.window} responses): the payload "
            f"is too large or too costly to encode. Return less data (pagination, fewer fields) or declare a "
            f"response model."
        )
    return verdict_on(
        seen,
        root_cause=ROOT_CAUSE,
        summary=summary,
        evidence={
            "p50_bytes": int(seen.p50_bytes),
            "p50_uncompressed_bytes_to_gzip_clients": int(seen.p50_exposed_bytes),
            "content_encoding": "identity" if large else seen.content_encoding,
            "serialize_p50_ms": ms(seen.serialize_p50_s),
            "serialize_share_of_request": round(seen.serialize_share_p50, 3),
            "compression_middleware": seen.compression_middleware,
            "threshold_bytes": large_bytes,
            "responses": seen.responses,
        },
    )


def loop_block_summary(where: str, blocked_ms: float) -> str:
    """The summary of a block of the event loop caught serialising a response."""
    return (
        f"Serialising the response of {where} blocked the event loop for {blocked_ms:.0f} ms; every concurrent "
        "request waited. Return less data (paginate or stream it), or serialise it off the loop."
    )


def size_text(n: float) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.0f} KiB"
