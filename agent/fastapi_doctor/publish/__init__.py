"""Publish: what the agent shows and exports, read from the findings store and the metrics.

The side server (``server``: /metrics, /doctor, the page, /runbooks/), the page and the CLI's tables
(``report/``) with the page's charts (``history``), the findings as telemetry (``findings_export``)
and the request and slow-query logs with their OTLP pipeline (``logs`` and the modules it uses).
Nothing here imports a signal, and no signal imports this package (pyproject.toml's import-linter
contracts).
"""

from __future__ import annotations

# Started after every signal of ``signals.REGISTRY``, with the same (detector name, "module:Class")
# shape and switch: the request log's hook reads the findings the signals raised for the request.
REGISTRY: list[tuple[str, str]] = [
    ("logs", "fastapi_doctor.publish.logs:LogsSignal"),
]
