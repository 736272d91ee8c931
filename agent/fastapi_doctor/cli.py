"""``fastapi-doctor``: check-config, report, and the commands other packages add (the demo's ``demo``)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from fastapi_doctor import config


def check_config(args: argparse.Namespace) -> int:
    if args.list:
        for (env, default, meaning), setting in zip(config.environment_table(), config.SETTINGS):
            print(f"{env:40} {default:20} {meaning} Allowed: {setting.allowed}.")
        return 0
    _, errors = config.load()
    for error in errors:
        print(f"fastapi-doctor: {error}", file=sys.stderr)
    if errors:
        return 1
    print("fastapi-doctor: configuration OK")
    return 0


def fetch_doctor(url: str, token: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """The /doctor document of a running agent. Raises ``ReportError`` with a clear message."""
    request = urllib.request.Request(url.rstrip("/") + "/doctor")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise ReportError(f"{url} answered HTTP {exc.code}" + (" (set --token)" if exc.code == 401 else "")) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ReportError(f"cannot reach the agent at {url}: {reason}") from exc
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ReportError(f"{url}/doctor did not return JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("findings"), list):
        raise ReportError(f"{url}/doctor returned JSON without a findings list")
    return doc


DEFAULT_URL = "http://127.0.0.1:9464"
# Entry-point group of the commands other packages add (pyproject.toml: the demo's).
COMMANDS = "fastapi_doctor.commands"


class ReportError(Exception):
    pass


def report(args: argparse.Namespace) -> int:
    from fastapi_doctor.publish.report.terminal import render_table

    if args.prometheus or len(args.url or ()) > 1:
        return fleet_report(args)
    try:
        doc = fetch_doctor((args.url or [DEFAULT_URL])[0], args.token)
    except ReportError as exc:
        print(f"fastapi-doctor: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(doc))
    return 0


def fleet_report(args: argparse.Namespace) -> int:
    """Several side servers merged, or the fleet from Prometheus: each finding once, by finding_id."""
    from fastapi_doctor.publish.report import fleet
    from fastapi_doctor.publish.report.terminal import render_fleet

    try:
        if args.prometheus:
            doc = fleet.from_prometheus(fleet.PrometheusAPI(args.prometheus), args.selector)
        else:
            docs, unreachable = [], []
            for url in args.url:
                try:
                    docs.append((url, fetch_doctor(url, args.token)))
                except ReportError as exc:
                    print(f"fastapi-doctor: {exc}", file=sys.stderr)
                    unreachable.append(url)
            if not docs:
                return 2
            doc = fleet.merge_documents(docs, unreachable)
    except fleet.FleetError as exc:
        print(f"fastapi-doctor: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2) if args.json else render_fleet(doc))
    return 0


def add_commands(sub: Any) -> None:
    """Commands that other packages add (the demo's ``demo``): each entry point of the group
    ``fastapi_doctor.commands`` is a function that adds its subparser."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=COMMANDS):
        try:
            entry.load()(sub)
        except Exception as exc:  # a broken plugin leaves the agent's own commands working
            print(f"fastapi-doctor: command {entry.name!r} unavailable: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastapi-doctor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="check the FASTAPI_DOCTOR_* and OTEL_* settings of this environment")
    p.add_argument("--list", action="store_true", help="list every setting with its default")
    p.set_defaults(func=check_config)

    p = sub.add_parser("report", help="print the findings of a running agent, or of a fleet")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--url", action="append", default=None,
                        help=f"a side server (default {DEFAULT_URL}); repeat it for several workers or "
                             "replicas: their findings are merged by finding_id")
    source.add_argument("--prometheus", default=None, metavar="URL",
                        help="read the fleet's findings from Prometheus' HTTP API at URL")
    p.add_argument("--selector", default=None, metavar="'{job=\"api\"}'",
                   help="with --prometheus: label matchers for the agent's series")
    p.add_argument("--token", default=None, help="bearer token when FASTAPI_DOCTOR_AUTH_TOKEN is set")
    p.add_argument("--json", action="store_true", help="print the /doctor JSON (the fleet document when merged)")
    p.set_defaults(func=report)

    add_commands(sub)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
