"""Runs one transcode worker process from asyncio: FLV bytes in through stdin, events out.

A worker is a separate process (``python -m vilokanam.transcode.worker SPEC``) so a crash or a
leak in libav takes down one stream only, and the ladders of several streams use every core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]

WRITE_TIMEOUT = 10.0
"""A worker that takes no input for this long is hung: it is killed (and restarted)."""


class WorkerGone(RuntimeError):
    """The worker exited or closed its input; the stream must restart it to go on."""


class WorkerProcess:
    """One worker: write FLV with :meth:`write`, end with :meth:`close_input`, then :meth:`wait`."""

    def __init__(self, spec: dict[str, Any], on_event: EventHandler, *, name: str) -> None:
        self.spec = spec
        self.on_event = on_event
        self.name = name
        self.process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ended_cleanly = False

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vilokanam.transcode.worker",
            json.dumps(self.spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        self._tasks = [
            asyncio.create_task(self._read_events(), name=f"{self.name}-events"),
            asyncio.create_task(self._read_logs(), name=f"{self.name}-logs"),
        ]
        log.info("%s: transcode worker started (pid %d)", self.name, self.process.pid)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def write(self, data: bytes) -> None:
        assert self.process is not None and self.process.stdin is not None
        if self.process.stdin.is_closing() or self.process.returncode is not None:
            raise WorkerGone(f"{self.name}: worker exited with {self.process.returncode}")
        try:
            self.process.stdin.write(data)
            await asyncio.wait_for(self.process.stdin.drain(), WRITE_TIMEOUT)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise WorkerGone(f"{self.name}: worker input closed ({exc})") from exc
        except TimeoutError:
            self.kill()
            raise WorkerGone(f"{self.name}: worker stopped reading its input; killed") from None

    async def close_input(self) -> None:
        """EOF: the worker flushes its last segments and exits."""
        if self.process is None or self.process.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if not self.process.stdin.is_closing():
                self.process.stdin.close()
                try:
                    await asyncio.wait_for(self.process.stdin.wait_closed(), WRITE_TIMEOUT)
                except TimeoutError:
                    log.error("%s: worker stopped reading its input; killing it", self.name)
                    self.kill()

    async def wait(self, timeout: float = 15.0) -> int:
        """Wait for exit (events all handled); kill it after ``timeout`` seconds."""
        assert self.process is not None
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        if pending:
            log.error("%s: worker did not exit within %.0f s; killing it", self.name, timeout)
            self.kill()
        # After exit (or kill) the readers reach EOF: every event written is still handled.
        await asyncio.gather(*self._tasks)
        return await self.process.wait()

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()

    async def _read_events(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: unreadable worker output %r", self.name, line[:200])
                continue
            if event.get("type") == "end":
                self.ended_cleanly = True
            try:
                await self.on_event(event)
            except Exception:
                log.exception("%s: failed to handle worker event %s", self.name, event)

    async def _read_logs(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            log.info("%s: worker: %s", self.name, line.decode(errors="replace").rstrip())
