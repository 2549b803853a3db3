"""The API of the real ``vilokanam serve`` process: env token, the generated token file."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e

ENV_TOKEN = "serve-env-token-0123456789abcdef"


@contextmanager
def serve(config: Path, **env: str) -> Iterator[tuple[str, str]]:
    """Run ``vilokanam serve``; yields (API base URL, banner text); SIGTERM and exit 0 after."""
    command = [str(Path(sys.executable).with_name("vilokanam")), "serve", "--config", str(config)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VILOKANAM_")}
    environ.update(env, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("Operator API:" in x for x in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        banner = "".join(lines)
        found = re.search(r"Operator API: (http://\S+/api/v1)", banner)
        assert found, banner
        yield found.group(1), banner
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, "".join(lines) + rest


def call(base: str, method: str, path: str, body: Any = None, token: str | None = None):  # type: ignore[no-untyped-def]
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_api_with_env_token_then_with_a_generated_token_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "vilokanam.toml"
    config.write_text(
        f'data_dir = "{data}"\npublic_host = "127.0.0.1"\n'
        f"[rtmp]\nport = {free_port()}\n[http]\nport = {free_port()}\n"
    )
    with serve(config, VILOKANAM_API_TOKEN=ENV_TOKEN) as (base, banner):
        assert "bearer token in api.token" in banner and ENV_TOKEN not in banner
        assert call(base, "GET", "/status")[0] == 401
        status, created = call(base, "POST", "/channels", {"slug": "served"}, ENV_TOKEN)
        assert status == 201 and created["stream_key"].startswith("sk_")
        status, got = call(base, "GET", "/channels/served", token=ENV_TOKEN)
        assert status == 200 and got["slug"] == "served" and "stream_key" not in got
        assert call(base, "GET", "/openapi.json")[0] == 200
    assert not (data / "api-token").exists(), "a configured token writes no file"

    with serve(config) as (base, banner):
        token_file = data / "api-token"
        assert f"bearer token in {token_file}" in banner
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token not in banner
        assert call(base, "GET", "/channels/served", token=ENV_TOKEN)[0] == 401
        status, channels = call(base, "GET", "/channels", token=token)
        assert status == 200 and {"demo", "served"} <= {c["slug"] for c in channels}
    with serve(config) as (base, _):
        assert token_file.read_text().strip() == token, "kept across restarts"
        assert call(base, "GET", "/status", token=token)[0] == 200


def test_serve_logs_json_lines_with_log_format_json(tmp_path: Path) -> None:
    config = tmp_path / "vilokanam.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\npublic_host = "127.0.0.1"\n'
        f"[rtmp]\nport = {free_port()}\n[http]\nport = {free_port()}\n"
    )
    command = [
        str(Path(sys.executable).with_name("vilokanam")),
        "serve",
        "--config",
        str(config),
        "--log-format",
        "json",
    ]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VILOKANAM_")}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "Operator API:" in process.stdout.readline():
                break
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    records = [json.loads(line) for line in errors.splitlines() if line.strip()]
    assert records, "the server logged something"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    messages = [r["msg"] for r in records]
    assert any(m.startswith("database migrated: 0001") for m in messages), messages
    assert any(m.startswith("listening: rtmp") for m in messages), messages
