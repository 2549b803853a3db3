"""``vilokanam billing ingest-logs``: bill segment fetches from CDN access logs.

With a server reachable (the local one, or ``--server URL --token T``) the files are read and
parsed here and sent in batches to its API, which feeds its live billing and viewer counts and
keeps each file's cursor. With no server running, the same ingester runs in this process on the
local database (its own billing service, flushed before exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vilokanam.billing.cdnlogs.formats import FORMATS
from vilokanam.cli import output
from vilokanam.cli.backend import CliError, LocalBackend, RemoteBackend
from vilokanam.cli.options import ConfigOption, JsonOption, ServerOption, TokenOption, backend
from vilokanam.cli.runner import run

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
        help="Tail every log file in this folder (new files, growth, rotation) until Ctrl-C.",
        exists=True,
        file_okay=False,
    ),
]
FilesArgument = Annotated[
    list[Path] | None,
    typer.Argument(help="Access log files (gzipped ones too).", exists=True, dir_okay=False),
]


class RemoteTarget:
    """A server's API as the reader's target."""

    def __init__(self, api: RemoteBackend) -> None:
        self.api = api

    async def cursor(self, source: str) -> CursorState:
        from vilokanam.billing.cdnlogs.cursors import CursorState

        return CursorState(**await asyncio.to_thread(self.api.cdn_cursor, source))

    async def submit(self, batch: Batch) -> tuple[Summary, CursorState]:
        from vilokanam.billing.cdnlogs.cursors import CursorState
        from vilokanam.billing.cdnlogs.ingest import Summary

        body = asdict(batch)
        body["fetches"] = [asdict(fetch) for fetch in batch.fetches]
        answer = await asyncio.to_thread(self.api.cdn_fetches, body)
        return Summary.from_dict(answer["summary"]), CursorState(**answer["cursor"])


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


async def _ingest(
    target: Target, files: list[Path], fmt: str, watch: Path | None, as_json: bool
) -> dict[str, Any]:
    from vilokanam.billing.cdnlogs.ingest import Summary
    from vilokanam.billing.cdnlogs.reader import LogReader

    reader = LogReader(target, fmt, on_batch=_progress(as_json) if watch else None)
    reports = await reader.ingest(files) if files else []
    total = Summary()
    for report in reports:
        total.add(report.summary)
    if watch is not None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            total.add(await reader.watch(watch, stop=stop))
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)
                loop.remove_signal_handler(signal.SIGTERM)
    return {"files": [report.as_dict() for report in reports], "total": total.as_dict()}


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

    Reading a log again never bills twice; each file resumes where it was left."""
    paths = list(files or [])

    def act() -> None:
        if fmt != "auto" and fmt not in FORMATS:
            raise CliError(f"--format {fmt!r}: use auto, {', '.join(FORMATS)}", 2)
        if not paths and watch is None:
            raise CliError("give access log FILEs, or --watch DIR", 2)
        chosen = backend(config, server, token)
        api = chosen if isinstance(chosen, RemoteBackend) else chosen.ingest_server()

        async def main() -> dict[str, Any]:
            if api is not None:
                return await _ingest(RemoteTarget(api), paths, fmt, watch, as_json)
            assert isinstance(chosen, LocalBackend)
            async with local_target(chosen) as target:
                return await _ingest(target, paths, fmt, watch, as_json)

        result = asyncio.run(main())

        def render(info: dict[str, Any]) -> None:
            rows = info["files"]
            if len(rows) != 1:
                rows = [*rows, _total_row(info["total"], len(rows))]
            output.table(rows, FILE_COLUMNS, "No log files read.")

        output.show(result, as_json, render)

    run(act)
