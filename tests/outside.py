"""Outside components in tests: missing → skip here, fail in CI; free ports; dropping root.

Shared by the fixture modules that start real servers (PostgreSQL, nginx, moto, chopsticks).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from pathlib import Path
from typing import NoReturn

import pytest


def unavailable(message: str) -> NoReturn:
    """A component a test needs is missing: fail in CI (``VILOKANAM_REQUIRE_ALL=1``), else skip."""
    if os.environ.get("VILOKANAM_REQUIRE_ALL") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_unprivileged(root: Path, *, user_env: str, refusal: str) -> list[str]:
    """Command prefix that runs a server as an unprivileged owner of ``root`` and everything in
    it (empty unless we are root): ``$user_env``, else ``nobody``, through ``runuser`` (or
    ``setpriv``). ``refusal`` says why root will not do."""
    if os.geteuid() != 0:
        return []
    user = os.environ.get(user_env, "nobody")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        unavailable(f"user {user!r} not found: {refusal}")
    for path in [root, *root.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", user, "--"]
    if setpriv := shutil.which("setpriv"):
        return [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    unavailable(f"running as root without runuser or setpriv: {refusal}")
