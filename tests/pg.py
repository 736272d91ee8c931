"""A throwaway PostgreSQL cluster for tests (a pytest plugin: ``pytest_plugins = ["pg"]``).

Debian's ``initdb`` and ``pg_ctl`` start a private cluster on a free port of 127.0.0.1 with
``fsync=off``, its socket and data in a temporary directory, run as the ``postgres`` user when the
tests run as root. It is removed at the end of the session. A missing PostgreSQL is a test failure,
never a skip: CI installs it (``.ci/run``).

Fixtures: ``postgres`` (session: the cluster) and ``pg_database`` (a fresh database per test, dropped
afterwards). The role has a password, so tests can check the agent never exposes it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import free_port

USER = "doctor"
PASSWORD = "s3cret-pg-pass"


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    pytest.fail("PostgreSQL is not installed (pg_ctl not found): `apt-get install postgresql` (.ci/run does it)")


@dataclass
class PostgresCluster:
    bin_dir: Path
    root: Path
    port: int
    run_as: str | None  # the user the server runs as when the tests run as root

    host = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str = "app", driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{USER}:{PASSWORD}@{self.host}:{self.port}/{database}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60)

    def client(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a client program (psql, createdb, dropdb) against the cluster over its socket."""
        return self.run(program, "-h", str(self.socket_dir), "-p", str(self.port), "-U", USER, *args)

    def psql(self, database: str, sql: str) -> str:
        return self.client("psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql).stdout.strip()

    def start(self) -> None:
        self.socket_dir.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self.run(
                "initdb", "-D", str(self.data_dir), "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
                "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C",
            )
            options = (
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.host} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
            )
            self.run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.root / "server.log"), "-w",
                     "-t", "60", "start")
        except subprocess.CalledProcessError as exc:
            log = self.root / "server.log"
            detail = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"PostgreSQL failed to start: {exc.stderr}\n{detail}") from exc
        self.client("createdb", "app")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        self.client("createdb", name)

    def drop_database(self, name: str) -> None:
        self.client("dropdb", "--force", "--if-exists", name)


def start_cluster() -> PostgresCluster:
    run_as = "postgres" if os.geteuid() == 0 else None
    if run_as is not None:
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            pytest.fail("running as root needs the 'postgres' user (created by Debian's postgresql package)")
    root = Path(tempfile.mkdtemp(prefix="fastapi-doctor-pg-"))
    cluster = PostgresCluster(_bin_dir(), root, free_port(), run_as)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_database(postgres: PostgresCluster) -> Iterator[str]:
    """The name of a fresh, empty database (dropped after the test)."""
    name = "t_" + uuid.uuid4().hex[:12]
    postgres.create_database(name)
    try:
        yield name
    finally:
        postgres.drop_database(name)
