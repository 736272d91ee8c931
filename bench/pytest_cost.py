"""Cost of ``pytest --doctor`` on a test suite: wall time with and without the plugin.

    python bench/pytest_cost.py patient            # the demo patient's suite (agent/fastapi_doctor_demo/tests)
    python bench/pytest_cost.py fastapi [--doctor-json PATH] [-- extra pytest args]
                                                   # FastAPI's own suite (the sdist of tests/fastapi_suite)

Each suite runs alternately without and with the plugin (``--doctor=report`` for FastAPI's, which is
not ours to fail; ``--doctor`` for the patient's, whose sick tests are meant to fail), ``--rounds``
times, one process each (no xdist: the figure is the plugin's cost, not the scheduler's). Prints the
median wall time of each and the ratio; results go to bench/results/pytest_cost-<suite>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fastapi_suite"))


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return time.perf_counter() - start, proc.returncode, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("suite", choices=["patient", "fastapi"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--doctor-json", default=None)
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTAPI_DOCTOR_", "OTEL_"))}
    if args.suite == "patient":
        python, cwd = Path(sys.executable), ROOT
        base = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                "agent/fastapi_doctor_demo/tests", *args.pytest_args]
        with_plugin = ["--doctor"]
    else:
        import importlib.metadata

        import run as fastapi_suite  # tests/fastapi_suite/run.py: the sdist and its venv

        version = importlib.metadata.version("fastapi")
        cwd = fastapi_suite.sources(version)
        python = fastapi_suite.venv(version, cwd)
        base = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args]
        with_plugin = ["--doctor=report"]
    if args.doctor_json:
        with_plugin.append(f"--doctor-json={Path(args.doctor_json).resolve()}")
    without: list[float] = []
    with_: list[float] = []
    for _ in range(args.rounds):
        seconds, code, out = timed(base, cwd, env)
        without.append(seconds)
        print(f"without: {seconds:.1f} s (exit {code}) {out.strip().splitlines()[-1] if out.strip() else ''}", flush=True)
        seconds, code, out = timed(base + with_plugin, cwd, env)
        with_.append(seconds)
        tail = out.strip().splitlines()
        print(f"with:    {seconds:.1f} s (exit {code}) {tail[-1] if tail else ''}", flush=True)
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / ".cache" / f"pytest_cost-{args.suite}.log").write_text(out)  # the last run's output
    result = {
        "suite": args.suite,
        "rounds": args.rounds,
        "without_s": round(statistics.median(without), 2),
        "with_s": round(statistics.median(with_), 2),
        "ratio": round(statistics.median(with_) / statistics.median(without), 3),
    }
    print(json.dumps(result))
    (ROOT / "bench" / "results" / f"pytest_cost-{args.suite}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
