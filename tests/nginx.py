"""A real nginx with the docs/cdn.md configuration, as a cache in front of a test server.

Fixture: ``start_nginx(origin)`` → :class:`Nginx` listening on a free loopback port, proxying
to ``origin`` (``127.0.0.1:PORT``), stopped after the test. The ``http {}`` part is the config
block of docs/cdn.md itself, with only its paths, address and port replaced (each replacement
must apply, so the doc and the test cannot drift). Everything nginx writes stays in a temp
prefix (``nginx -p``), and as root it runs as ``nobody`` (``$VILOKANAM_NGINX_USER``) through
``runuser``. A missing nginx skips, or fails in CI (``VILOKANAM_REQUIRE_ALL=1``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.outside import as_unprivileged, free_port, unavailable

DOC = Path(__file__).resolve().parents[1] / "docs" / "cdn.md"
MARKER = "<!-- vilokanam-nginx-conf"
JSON_LOG = "vilokanam.json.log"
COMBINED_LOG = "vilokanam.log"


def nginx_binary() -> str:
    """nginx's path: PATH, else Debian's /usr/sbin (not on every user's PATH)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if found is None:
        unavailable("nginx not installed (Debian: apt-get install nginx); `.ci/run` installs it")
    return found


def doc_config() -> str:
    """The ```nginx block after the marker in docs/cdn.md."""
    text = DOC.read_text()
    found = re.search(re.escape(MARKER) + r".*?\n```nginx\n(.*?)\n```", text, re.S)
    assert found, f"{DOC}: no ```nginx block after {MARKER!r}"
    return found[1] + "\n"


def render_config(origin: str, port: int, prefix: Path) -> str:
    """The doc's block for this test: origin, port and paths inside ``prefix``; both logs."""
    config = doc_config()
    replacements = [
        ("server 127.0.0.1:8080;", f"server {origin};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("/var/cache/nginx/", f"{prefix}/cache/"),
        ("# access_log /var/log/nginx/", "access_log /var/log/nginx/"),  # the combined log too
        ("/var/log/nginx/", f"{prefix}/logs/"),
    ]
    for old, new in replacements:
        assert old in config, f"docs/cdn.md's nginx block no longer has {old!r}"
        config = config.replace(old, new)
    return config


def main_config(prefix: Path) -> str:
    """What a packaged nginx.conf gives the doc's block, with every path inside ``prefix``."""
    temp = prefix / "tmp"
    return "\n".join(
        [
            "daemon off;",
            "worker_processes 1;",
            f"pid {prefix}/nginx.pid;",
            f"error_log {prefix}/logs/error.log info;",
            "events { worker_connections 512; }",
            "http {",
            "    default_type application/octet-stream;",
            f"    client_body_temp_path {temp}/body;",
            f"    proxy_temp_path {temp}/proxy;",
            f"    fastcgi_temp_path {temp}/fastcgi;",
            f"    uwsgi_temp_path {temp}/uwsgi;",
            f"    scgi_temp_path {temp}/scgi;",
            "    access_log off;",
            f"    include {prefix}/conf/vilokanam.conf;",
            "}",
            "",
        ]
    )


@dataclass
class Nginx:
    prefix: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        """The JSON access log (``log_format vilokanam_json``)."""
        return self.prefix / "logs" / JSON_LOG

    @property
    def combined_log(self) -> Path:
        return self.prefix / "logs" / COMBINED_LOG

    def error_log(self) -> str:
        try:
            return (self.prefix / "logs" / "error.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                master = int((self.prefix / "nginx.pid").read_text())
                os.kill(master, signal.SIGTERM)  # the nginx master this fixture started
            except (OSError, ValueError):
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def launch(binary: str, origin: str) -> Nginx:
    prefix = Path(tempfile.mkdtemp(prefix="vilokanam-nginx-"))
    for folder in ("conf", "logs", "cache", "tmp"):
        (prefix / folder).mkdir()
    port = free_port()
    (prefix / "conf" / "vilokanam.conf").write_text(render_config(origin, port, prefix))
    (prefix / "conf" / "nginx.conf").write_text(main_config(prefix))
    as_owner = as_unprivileged(
        prefix, user_env="VILOKANAM_NGINX_USER", refusal="nginx is not run as root in tests"
    )
    command = [*as_owner, binary, "-p", f"{prefix}/", "-c", "conf/nginx.conf",
               "-e", "logs/error.log"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    nginx = Nginx(prefix, port, process)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"nginx exited {process.returncode}: {stderr}\n{nginx.error_log()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return nginx
        time.sleep(0.05)
    nginx.stop()
    raise RuntimeError(f"nginx did not listen on {port} within 15 s:\n{nginx.error_log()}")


@pytest.fixture
def start_nginx() -> Iterator[Callable[[str], Nginx]]:
    """Start nginx (the docs/cdn.md config) in front of ``origin``; stopped after the test."""
    binary = nginx_binary()
    started: list[Nginx] = []

    def start(origin: str) -> Nginx:
        nginx = launch(binary, origin)
        started.append(nginx)
        return nginx

    yield start
    for nginx in started:
        nginx.stop()
        shutil.rmtree(nginx.prefix, ignore_errors=True)
