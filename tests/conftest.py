"""Shared fixtures: a real server on real sockets, and the rule for missing components."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.outside import free_port, unavailable
from vilokanam.config import Settings

pytest_plugins = ["tests.postgres", "tests.chain", "tests.s3", "tests.nginx"]

REQUIRE_ALL = os.environ.get("VILOKANAM_REQUIRE_ALL") == "1"


def require_tool(name: str, why: str) -> str:
    """Path of an outside program; missing → skip here, fail in CI (VILOKANAM_REQUIRE_ALL=1)."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not installed ({why}); `.ci/run` installs it")
    return path


def make_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Test settings: loopback, free ports, data in a temp dir; ``sections`` override."""
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "public_host": "127.0.0.1",
        "rtmp": {"host": "127.0.0.1", "port": free_port(), "reconnect_window": 2.0},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "hls": {"window": 30},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            base.setdefault(name, {}).update(values)
        else:
            base[name] = values
    return Settings.model_validate(base)


class ServerThread:
    """A VilokanamServer running on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        from vilokanam.app import VilokanamServer

        self.settings = settings
        self.printed: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.server = VilokanamServer(settings, echo=self.printed.append)
        self._thread = threading.Thread(target=self._run, name="vilokanam-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def call(self, make_coro: Callable[[], Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(make_coro(), self.loop).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.call(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.server.store

    @property
    def rtmp_base(self) -> str:
        return f"rtmp://127.0.0.1:{self.settings.rtmp.port}/{self.settings.rtmp.app}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.settings.http.port}"

    def create_channel(self, slug: str) -> str:
        return self.store.create_channel(slug)[1]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start a server with overrides, e.g. ``start_server(hls={"window": 3})``; stopped after."""
    servers: list[ServerThread] = []

    def start(**sections: Any) -> ServerThread:
        server = ServerThread(make_settings(tmp_path / f"data{len(servers)}", **sections))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
