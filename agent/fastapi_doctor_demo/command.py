"""``fastapi-doctor demo``: the command the demo adds to the agent's CLI through the entry point group
``fastapi_doctor.commands`` (pyproject.toml), so that the agent never imports its demo. Light to
import: the runner loads when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

from fastapi_doctor import config


def add_command(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the patient app under the agent and print the diagnosis")
    p.add_argument("--database-url", default=None, help="SQLAlchemy async URL (default: a SQLite file)")
    p.add_argument("--report", default="fastapi-doctor-report.html", help="where to save the HTML report")
    p.add_argument("--quick", action="store_true", help="shorter load phases")
    p.add_argument("--only", action="append", choices=config.ROOT_CAUSES, metavar="ROOT_CAUSE",
                   help="run only this scenario (repeatable): " + ", ".join(config.ROOT_CAUSES))
    p.add_argument("--summary", default=None, metavar="PATH", help="also write the result as JSON to PATH")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastapi_doctor_demo.run import main

    return main(args)
