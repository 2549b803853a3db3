"""Reading CDN log files into batches for a :class:`Target`: resumable, rotation-aware, tailing.

A file is known by its first line's digest and its name (see :mod:`.cursors`); reading starts at
its cursor, covers complete lines only (a line still being written waits for the next pass),
and sends the media requests among them in batches. A text file shorter than its cursor was
truncated and is read from the start; a new first line makes it a new file. Gzipped files
(CloudFront) are complete: they are read whole, once.

The target is the server's API (the CLI, when a server runs) or an in-process
:class:`~vilokanam.billing.cdnlogs.ingest.CdnIngester`; the target feeds billing and moves the
cursor only after it accepted a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from vilokanam.billing.cdnlogs.cursors import CursorState, source_key
from vilokanam.billing.cdnlogs.formats import BadLine, LineParser, LogFetch, detect, parser_for
from vilokanam.billing.cdnlogs.ingest import Batch, Summary
from vilokanam.billing.cdnlogs.paths import classify

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
"""Longest line read (bytes): a longer one is skipped, counted as a bad line, never held whole
(a gzip bomb of one endless line costs no memory)."""
READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile)
"""What reading a file may raise: a file removed, unreadable, or a truncated or corrupt .gz."""
BATCH_LINES = 1000
"""Lines per batch at most: one API call (or one billing flush) each."""
BATCH_BYTES = 512 * 1024
"""Bytes of media requests per batch at most, as JSON (the API takes bodies up to 1 MiB)."""
PROBE_LINES = 50


class Target(Protocol):
    async def cursor(self, source: str) -> CursorState: ...
    async def submit(self, batch: Batch) -> tuple[Summary, CursorState]: ...


@dataclass
class FileReport:
    """What one pass over one file did."""

    path: str
    source: str = ""
    format: str = ""
    start: int = 0
    end: int = 0
    note: str = ""
    """Why nothing was read (empty, unknown format, already read), or how it resumed."""
    summary: Summary = field(default_factory=Summary)
    failed: bool = False
    """Reading it failed (a truncated .gz, an I/O error): what was read before counts."""

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "source": self.source,
            "format": self.format,
            "start": self.start,
            "end": self.end,
            "note": self.note,
            "failed": self.failed,
            **self.summary.as_dict(),
        }


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(2) == b"\x1f\x8b"


def _open(path: Path, compressed: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def lines_of(file: IO[bytes], compressed: bool) -> Iterator[tuple[bytes | None, int]]:
    """``(line, bytes it took)`` for each complete line, read at most :data:`MAX_LINE` bytes at
    a time; an over-long line comes as ``(None, its length)``. A text file's last line without
    its newline is still being written: it ends the lines (a gzipped file's last line counts)."""
    while True:
        raw = file.readline(MAX_LINE + 1)
        if not raw:
            return
        if raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        if len(raw) <= MAX_LINE:  # the end of the file
            if compressed:
                yield raw, len(raw)
            return
        size = len(raw)
        while (rest := file.readline(MAX_LINE)) and not rest.endswith(b"\n"):
            size += len(rest)
        size += len(rest)
        if not rest and not compressed:
            return  # an over-long line still being written
        yield None, size


@dataclass(frozen=True, slots=True)
class Identity:
    digest: str
    format: str | None
    first_at: float | None
    """Time of the first request in the file (to read files oldest first)."""


def identify(path: Path, compressed: bool, fmt: str = "auto") -> Identity | None:
    """The digest of the file's first complete line that is not a header (CloudFront files
    all begin ``#Version: 1.0``), the format, and the first request's time; None when the file
    has no such line yet."""
    with _open(path, compressed) as file:
        lines = []
        for raw, _ in lines_of(file, compressed):
            if raw is not None:
                lines.append(raw)
            if len(lines) >= PROBE_LINES:
                break
    first = next((raw for raw in lines if not raw.startswith(b"#")), None)
    if first is None:
        return None
    texts = [raw.decode("utf-8", "replace") for raw in lines]
    found = fmt if fmt != "auto" else next((detect(t) for t in texts if t.strip()), None)
    first_at = None
    if found is not None:
        parser = parser_for(found)
        for text in texts:
            try:
                fetch = parser.parse(text)
            except BadLine:
                continue
            if fetch is not None:
                first_at = fetch.at
                break
    return Identity(hashlib.sha256(first).hexdigest()[:32], found, first_at)


def read_batches(
    path: Path,
    compressed: bool,
    parser: LineParser,
    source: str,
    start: int,
    limit: int = BATCH_LINES,
    max_bytes: int = BATCH_BYTES,
) -> Iterator[Batch]:
    """Batches of the complete lines from ``start`` on (a gzipped file's last line counts as
    complete). The parser first reads the file's header lines (CloudFront ``#Fields:``)."""
    with _open(path, compressed) as file:
        if start > 0:
            while (raw := file.readline(MAX_LINE)).startswith(b"#") and file.tell() <= start:
                with contextlib.suppress(BadLine):
                    _parse(parser, raw)
            file.seek(start)
        position = start
        reading = lines_of(file, compressed)
        while True:
            lines = bad = other = size = 0
            fetches = []
            batch_start = position
            while lines < limit and size < max_bytes:
                item = next(reading, None)
                if item is None:
                    break  # the end, or a line still being written
                raw, length = item
                position += length
                lines += 1
                if raw is None:
                    bad += 1  # over-long: never parsed
                    continue
                try:
                    fetch = _parse(parser, raw)
                except BadLine:
                    bad += 1
                    continue
                if fetch is None:
                    continue
                if classify(fetch.path) is None:
                    other += 1
                    continue
                fetches.append(fetch)
                size += wire_size(fetch)
            if not lines:
                return
            yield Batch(source, batch_start, position, lines, bad, other, fetches)


def _parse(parser: LineParser, raw: bytes) -> LogFetch | None:
    return parser.parse(raw.decode("utf-8", "replace"))


def wire_size(fetch: LogFetch) -> int:
    """Bytes of ``fetch`` as JSON at most (a non-ASCII character: a 6-byte ``\\uXXXX``)."""
    size = 200
    for text in (fetch.method, fetch.path, fetch.query, fetch.client, fetch.user_agent,
                 fetch.request_id):  # fmt: skip
        size += len(text) if text.isascii() else 6 * len(text)
    return size


class LogReader:
    """Reads files into a target, remembering where each one was left (``watch`` passes)."""

    def __init__(
        self,
        target: Target,
        fmt: str = "auto",
        on_batch: Callable[[Path, Summary], None] | None = None,
    ) -> None:
        if fmt != "auto":
            parser_for(fmt)  # refuses an unknown name now
        self.target = target
        self.fmt = fmt
        self.on_batch = on_batch
        self._offsets: dict[str, int] = {}
        """source → offset reached in this run (no cursor round trip on every pass)."""
        self._unchanged: dict[Path, tuple[int, int, int]] = {}
        """path → (inode, size, mtime) when it was last read to its end."""

    async def ingest(self, paths: list[Path]) -> list[FileReport]:
        """One pass over ``paths``, oldest first request first. A file that cannot be read (a
        truncated .gz) is reported as failed, and the others are read all the same."""
        found: list[tuple[float, str, Path, bool, Identity | None]] = []
        reports: list[FileReport] = []
        for path in paths:
            try:
                compressed = is_gzip(path)
                ident = await asyncio.to_thread(identify, path, compressed, self.fmt)
            except READ_ERRORS as exc:
                log.warning("cannot read %s: %s", path, exc)
                reports.append(FileReport(str(path), note=f"unreadable: {exc}", failed=True))
                continue
            order = ident.first_at if ident is not None and ident.first_at is not None else 0.0
            found.append((order, str(path), path, compressed, ident))
        for _, _, path, compressed, ident in sorted(found, key=lambda item: item[:2]):
            reports.append(await self.ingest_file(path, compressed, ident))
        return reports

    async def ingest_file(self, path: Path, compressed: bool, ident: Identity | None) -> FileReport:
        report = FileReport(str(path))
        if ident is None:
            report.note = "no complete line yet"
            return report
        if ident.format is None:
            report.note = "unknown format (use --format)"
            return report
        report.format = ident.format
        source = report.source = source_key(ident.digest, path.name)
        start = self._offsets.get(source)
        if start is None:
            cursor = await self.target.cursor(source)
            start = cursor.offset
            if cursor.renamed_from and start:
                report.note = f"resumed from {cursor.renamed_from.split(':', 1)[1]}"
        if not compressed and os.path.getsize(path) < start:
            start = 0  # truncated and written again: read it all
            report.note = "truncated: read from the start"
        report.start = report.end = start
        batches = read_batches(path, compressed, parser_for(ident.format), source, start)
        while True:
            try:
                batch = await asyncio.to_thread(next, batches, None)
            except READ_ERRORS as exc:
                log.warning("reading %s failed after byte %s: %s", path, report.end, exc)
                report.note, report.failed = f"failed: {exc}", True
                break
            if batch is None:
                break
            summary, cursor = await self.target.submit(batch)
            self._offsets[source] = report.end = cursor.offset
            report.summary.add(summary)
            if self.on_batch is not None:
                self.on_batch(path, summary)
        if report.end == start and not report.note:
            report.note = "nothing new"
        return report

    async def watch(
        self, directory: Path, interval: float = 1.0, stop: asyncio.Event | None = None
    ) -> Summary:
        """Tail every log file in ``directory`` (new files, growth, rotation) until ``stop``."""
        total = Summary()
        stop = stop or asyncio.Event()
        while not stop.is_set():
            changed: list[Path] = []
            signatures: dict[Path, tuple[int, int, int]] = {}
            for path in sorted(directory.iterdir()):
                if path.name.startswith("."):
                    continue
                try:
                    if not path.is_file():
                        continue
                    info = path.stat()
                except OSError:
                    continue  # removed meanwhile
                signature = (info.st_ino, info.st_size, info.st_mtime_ns)
                if self._unchanged.get(path) != signature:
                    changed.append(path)
                    signatures[path] = signature
            # oldest first request first, like ingest(): a later file fed first would hold
            # back the content of the earlier one under the cap
            for report in await self.ingest(changed):
                total.add(report.summary)
                path = Path(report.path)
                if report.note != "no complete line yet":
                    # read to its end, of an unknown format, or failed: not read again until
                    # it changes
                    self._unchanged[path] = signatures[path]
            if len(self._unchanged) > 100_000:
                self._unchanged.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        return total
