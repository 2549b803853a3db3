"""``vilokanam billing ingest-logs``: bill segment fetches from CDN access logs.

The files are read and parsed here and sent in batches to a server's API (the local one, or
``--server URL --token T``), which feeds its live billing and viewer counts and keeps each
file's cursor. Two billing trackers on one database would each hold back content the other
credited (under-billing), so:

* ``--watch`` always goes through a server: while none answers it waits, retrying with backoff,
  and goes on where it was when the server is back;
* a one-shot run with no server answering right before it starts runs the same ingester in
  this process on the local database (its own billing service, flushed before exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from vilokanam.billing.cdnlogs.formats import FORMATS
from vilokanam.cli import output
from vilokanam.cli.backend import (
    CliError,
    LocalBackend,
    RemoteBackend,
    ServerUnavailable,
    ServerUnreachable,
)
from vilokanam.cli.options import ConfigOption, JsonOption, ServerOption, TokenOption, backend
from vilokanam.cli.runner import run

T = TypeVar("T")

if TYPE_CHECKING:
    from vilokanam.billing.cdnlogs.cursors import CursorState
    from vilokanam.billing.cdnlogs.ingest import Batch, Summary
    from vilokanam.billing.cdnlogs.reader import Target

FormatOption = Annotated[
    str,
    typer.Option("--format", help=f"Log format: auto (per file), {', '.join(FORMATS)}."),
]
WatchOption = Annotated[
    Path | None,
    typer.Option(
        "--watch",
        help="Tail every log file in this folder (new files, growth, rotation) until Ctrl-C. "
        "Always through a server (the local one, or --server): while none answers, it waits.",
        exists=True,
        file_okay=False,
    ),
]
FilesArgument = Annotated[
    list[Path] | None,
    typer.Argument(help="Access log files (gzipped ones too).", exists=True, dir_okay=False),
]


class Stopped(Exception):
    """Ctrl-C while waiting for the server."""


RETRY_FIRST = 1.0
RETRY_MAX = 30.0


class RemoteTarget:
    """A server's API as the reader's target.

    ``api``: the server's API, or a function giving it (None while there is none yet: the local
    server has not written its token). With ``wait`` an unreachable server is waited for,
    retrying with backoff until it answers or ``stop`` is set (so is a 502/503/504); else it
    is an error."""

    def __init__(
        self,
        api: RemoteBackend | Callable[[], RemoteBackend | None],
        *,
        wait: bool = False,
        stop: asyncio.Event | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self._api = api
        self.wait = wait
        self.stop = stop or asyncio.Event()
        self.say = say or _say
        self.first_retry = RETRY_FIRST
        self.max_retry = RETRY_MAX

    def _resolve(self) -> RemoteBackend | None:
        return self._api if isinstance(self._api, RemoteBackend) else self._api()

    async def _call(self, call: Callable[[RemoteBackend], T]) -> T:
        delay = self.first_retry
        while True:
            api = self._resolve()
            try:
                if api is None:
                    raise ServerUnreachable("the local server has not started yet (no API token)")
                return await asyncio.to_thread(call, api)
            except (ServerUnreachable, ServerUnavailable) as exc:  # down, or restarting
                if not self.wait:
                    raise
                self.say(f"waiting for the server: {exc}; retrying in {delay:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                raise Stopped
            delay = min(delay * 2, self.max_retry)

    async def cursor(self, source: str) -> CursorState:
        from vilokanam.billing.cdnlogs.cursors import CursorState

        return CursorState(**await self._call(lambda api: api.cdn_cursor(source)))

    async def submit(self, batch: Batch) -> tuple[Summary, CursorState]:
        """Send a batch (again after an outage: billing never credits a fetch twice)."""
        from vilokanam.billing.cdnlogs.cursors import CursorState
        from vilokanam.billing.cdnlogs.ingest import Summary

        body = asdict(batch)
        body["fetches"] = [asdict(fetch) for fetch in batch.fetches]
        answer = await self._call(lambda api: api.cdn_fetches(body))
        return Summary.from_dict(answer["summary"]), CursorState(**answer["cursor"])


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def local_target(local: LocalBackend) -> AsyncIterator[Target]:
    """The ingester in this process, with its own billing service (flushed on the way out)."""
    from vilokanam.billing.cdnlogs.ingest import Catalog, CdnIngester
    from vilokanam.billing.service import BillingService
    from vilokanam.billing.tokens import load_or_create_secret

    billing = BillingService(local.store, local.settings)
    await billing.start()
    try:
        secret = await asyncio.to_thread(load_or_create_secret, local.settings)
        yield CdnIngester(billing, Catalog(local.store, local.settings), secret)
    finally:
        await billing.stop()


def _skipped(summary: dict[str, Any]) -> str:
    reasons = dict(summary["skipped"])
    if summary["bad_lines"]:
        reasons["bad lines"] = summary["bad_lines"]
    return ", ".join(f"{count} {reason}" for reason, count in reasons.items()) or "-"


FILE_COLUMNS: list[output.Column] = [
    ("file", lambda r: Path(r["path"]).name + (f" ({r['format']})" if r["format"] else "")),
    ("lines", lambda r: r["lines"]),
    ("segments", lambda r: r["segments"]),
    ("billed", lambda r: r["billed"]),
    ("new s", lambda r: r["ticks"]),
    ("free", lambda r: r["free"]),
    ("skipped", _skipped),
    ("note", lambda r: r["note"] or "-"),
]


def _total_row(total: dict[str, Any], files: int) -> dict[str, Any]:
    label = f"total ({files} files)" if files else "total"
    return {"path": label, "format": "", "note": "", **total}


def _progress(as_json: bool) -> Any:
    def show(path: Path, summary: Summary) -> None:
        if as_json:
            typer.echo(json.dumps({"file": str(path), **summary.as_dict()}))
            return
        stamp = time.strftime("%H:%M:%S")
        output.console.print(
            f"{stamp} {path.name}: +{summary.lines} lines, {summary.segments} segments, "
            f"{summary.billed} billed (+{summary.ticks} s), {summary.free} free, "
            f"skipped: {_skipped(summary.as_dict())}",
            highlight=False,
        )

    return show


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        yield
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)


async def _ingest(
    target: Target,
    files: list[Path],
    fmt: str,
    watch: Path | None,
    as_json: bool,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    from vilokanam.billing.cdnlogs.ingest import Summary
    from vilokanam.billing.cdnlogs.reader import LogReader

    reader = LogReader(target, fmt, on_batch=_progress(as_json) if watch else None)
    reports = []
    total = Summary()
    with contextlib.suppress(Stopped):
        reports = await reader.ingest(files) if files else []
        for report in reports:
            total.add(report.summary)
        if watch is not None:
            total.add(await reader.watch(watch, stop=stop))
    return {"files": [report.as_dict() for report in reports], "total": total.as_dict()}


async def _watch_through_server(
    api: RemoteBackend | Callable[[], RemoteBackend | None],
    files: list[Path],
    fmt: str,
    watch: Path,
    as_json: bool,
) -> dict[str, Any]:
    """``--watch``: through the server's API only, waiting for it while it is down."""
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        target = RemoteTarget(api, wait=True, stop=stop)
        return await _ingest(target, files, fmt, watch, as_json, stop)


def ingest_logs(
    files: FilesArgument = None,
    fmt: FormatOption = "auto",
    watch: WatchOption = None,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Bill the segment fetches of CDN access logs (nginx, nginx JSON, CloudFront).

    Reading a log again never bills twice; each file resumes where it was left.

    Batches go to the server (local, or --server); with none running, a one-shot run bills here.

    --watch always goes through a server, and waits for it while it is down."""
    paths = list(files or [])

    def act() -> None:
        if fmt != "auto" and fmt not in FORMATS:
            raise CliError(f"--format {fmt!r}: use auto, {', '.join(FORMATS)}", 2)
        if not paths and watch is None:
            raise CliError("give access log FILEs, or --watch DIR", 2)
        chosen = backend(config, server, token)

        async def main() -> dict[str, Any]:
            if watch is not None:  # never in-process: a server started later would bill beside
                api = chosen if isinstance(chosen, RemoteBackend) else chosen._local_server
                return await _watch_through_server(api, paths, fmt, watch, as_json)
            if isinstance(chosen, RemoteBackend):
                return await _ingest(RemoteTarget(chosen), paths, fmt, None, as_json)
            running = await asyncio.to_thread(chosen.ingest_server)  # asked right before
            if running is not None:
                return await _ingest(RemoteTarget(running), paths, fmt, None, as_json)
            async with local_target(chosen) as target:
                return await _ingest(target, paths, fmt, None, as_json)

        result = asyncio.run(main())

        def render(info: dict[str, Any]) -> None:
            rows = info["files"]
            if len(rows) != 1:
                rows = [*rows, _total_row(info["total"], len(rows))]
            output.table(rows, FILE_COLUMNS, "No log files read.")

        output.show(result, as_json, render)

    run(act)
