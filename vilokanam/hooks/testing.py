"""A real webhook receiver for tests and local debugging: an aiohttp server in its own thread.

It records every request and answers from a per-path plan (status, delay), so a test can make
an endpoint fail twice, hang, or refuse, and then look at what arrived::

    with HookReceiver() as hooks:
        hooks.plan("/events", 500, 500)        # then 200 for every later request
        ... point webhooks.endpoints at hooks.url("/events") ...
        [first] = hooks.wait_for(lambda r: r.event == "stream.started")
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from vilokanam.hooks.signing import DELIVERY_HEADER, EVENT_HEADER


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    """``time.monotonic()`` when it arrived."""

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event(self) -> str | None:
        return self.headers.get(EVENT_HEADER)

    @property
    def delivery(self) -> str | None:
        return self.headers.get(DELIVERY_HEADER)


class HookReceiver:
    """Records requests on 127.0.0.1; ``plan`` sets the answers of the next requests per path."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._plans: dict[str, deque[tuple[int, float, str]]] = defaultdict(deque)
        self._defaults: dict[str, tuple[int, float, str]] = {}
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- control --------------------------------------------------------------
    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, *statuses: int, delay: float = 0.0, body: str = "") -> None:
        """The next requests to ``path`` get these statuses (after ``delay`` s each)."""
        with self._changed:
            self._plans[path].extend((status, delay, body) for status in statuses)

    def answer(self, path: str, status: int, *, delay: float = 0.0, body: str = "") -> None:
        """Every request to ``path`` once its plan is used up (default: 200 at once)."""
        with self._changed:
            self._defaults[path] = (status, delay, body)

    def received(self, path: str | None = None) -> list[Received]:
        with self._changed:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(
        self, predicate: Callable[[Received], bool], *, count: int = 1, timeout: float = 10.0
    ) -> list[Received]:
        """Block until ``count`` requests match ``predicate``; returns them in arrival order."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [r for r in self.requests if predicate(r)]
                if len(matching) >= count:
                    return matching
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(r.path, r.event) for r in self.requests]
                    raise AssertionError(
                        f"{len(matching)}/{count} matching request(s) within {timeout} s; "
                        f"received {seen}"
                    )
                self._changed.wait(left)

    # -- server ---------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._changed:
            self.requests.append(
                Received(request.path, dict(request.headers), body, time.monotonic())
            )
            plan = self._plans[request.path]
            status, delay, text = (
                plan.popleft() if plan else self._defaults.get(request.path, (200, 0.0, ""))
            )
            self._changed.notify_all()
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, text=text)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> HookReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close the server (requests still waiting are cut off); safe to call twice."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # Handlers still sleeping through a planned delay: cancel them, so nothing is left.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __enter__(self) -> HookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
