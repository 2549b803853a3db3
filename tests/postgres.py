"""A throwaway PostgreSQL cluster for tests: one per session, a fresh database per test.

Fixtures: ``postgres_url`` (session: the cluster's admin URL) and ``postgres_db_url`` (function: a
new, empty database). Missing PostgreSQL binaries skip the tests, or fail them in CI
(``VILOKANAM_REQUIRE_ALL=1``). As root, the server runs as an unprivileged user (initdb refuses
root): ``$VILOKANAM_PG_USER``, else ``nobody``, through ``runuser`` (or ``setpriv``).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.outside import as_unprivileged, free_port, unavailable

NEEDED = ("initdb", "pg_ctl", "postgres")
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def _complete(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in NEEDED)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: PATH, then Debian's layout (newest
    version first, 15 preferred), then ``pg_config --bindir``."""
    candidates: list[Path] = []
    for name in NEEDED:
        if found := shutil.which(name):
            candidates.append(Path(found).resolve().parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    versions.sort(key=lambda path: _version(path) != 15)
    candidates += [Path(path) for path in versions]
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    return next((path for path in candidates if _complete(path)), None)


def _version(path: str) -> int:
    part = Path(path).parent.name
    return int(part) if part.isdigit() else 0


@dataclass
class Cluster:
    """A running PostgreSQL cluster in a temp dir, trust auth, loopback only."""

    bindir: Path
    root: Path
    port: int = 0
    prefix: list[str] = field(default_factory=list)
    """How to run as the cluster's owner (``runuser -u USER --`` when we are root)."""

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, env=env, cwd=self.root
        )

    def start(self) -> None:
        init = self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr or init.stdout}")
        for _attempt in range(3):
            self.port = free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.root} {SERVER_OPTIONS}"
            started = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                "-w", "-t", "30", "-o", options, "start",
            )  # fmt: skip
            if started.returncode == 0:
                return
        log = (self.root / "log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log}")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Admin URL of a throwaway PostgreSQL cluster (started once per test session)."""
    bindir = find_bindir()
    if bindir is None:
        unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
            "install postgresql (Debian: apt-get install postgresql)"
        )
    root = Path(tempfile.mkdtemp(prefix="vilokanam-pg-"))
    cluster: Cluster | None = None
    try:
        cluster = Cluster(
            bindir,
            root,
            prefix=as_unprivileged(
                root, user_env="VILOKANAM_PG_USER", refusal="PostgreSQL cannot run as root"
            ),
        )
        cluster.start()
        yield cluster.url
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


_numbers = itertools.count(1)


def create_database(admin_url: str, template: str | None = None) -> str:
    """Create a new database in the cluster (a copy of ``template`` if given); returns its URL."""
    import psycopg

    name = f"test_{next(_numbers)}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{copy}')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def postgres_db_url(postgres_url: str) -> str:
    """URL of a new, empty database in the session's cluster."""
    return create_database(postgres_url)
