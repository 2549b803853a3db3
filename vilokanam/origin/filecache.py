"""Media files served from memory: a byte-bounded LRU of whole files, and the response that
sends one.

Segments never change once written (workers rename complete files into place under unique
names), so the origin keeps recently served ones in memory and answers plain GET/HEAD requests
from there: no thread-pool round trips to open and close the file, and no ``sendfile`` with its
separate header write and epoll registration. Every request still stats the file on disk, and
an entry is served only while that stat shows the very file it was read from (inode, size,
mtime in ns): a file replaced at the same name (``thumbnail.jpg`` every 30 s, renamed into
place) or deleted (retention, S3 releasing local copies) is never served from memory.

Memory: at most ``max_bytes`` of file bodies are kept (``DEFAULT_MAX_BYTES``, 256 MiB: about
7 minutes of a 5 Mbit/s ladder, all renditions together, or the live windows of some 30 such
channels), least recently served evicted first; a file over ``max_entry`` bytes is never
cached, and ``max_bytes=0`` caches nothing. Beyond that bound, bodies live only while they are
being read (one read per file at a time, in the default executor) or sent to a client.

Requests with ``Range`` or conditional headers are left to :class:`aiohttp.web.FileResponse`
(206, 304, 412, 416 exactly as before), as are files with a precompressed ``.gz``/``.br``
sibling, which ``FileResponse`` may send instead.
"""

from __future__ import annotations

import asyncio
import math
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Default bound on cached file bodies (a candidate for a setting)."""
DEFAULT_MAX_ENTRY = 16 * 1024 * 1024
"""Larger files are always sent from disk."""
COALESCE_BELOW = 64 * 1024
"""Bodies smaller than this go out in one write with the headers; larger ones right after the
headers, without first copying them into one buffer."""
CONDITIONAL = (
    hdrs.RANGE,
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
    hdrs.IF_RANGE,
)
"""Request headers that need ``FileResponse``'s range and validator logic."""
_PRECOMPRESSED = (".br", ".gz")


@dataclass(frozen=True, slots=True)
class CachedFile:
    """One file's bytes and the identity and validators of the version they are."""

    body: bytes
    inode: int
    mtime_ns: int
    size: int
    headers: dict[str, str]
    """What ``FileResponse`` adds for this version: ``ETag``, ``Last-Modified``,
    ``Content-Length``, ``Accept-Ranges``."""

    def matches(self, st: os.stat_result) -> bool:
        """Whether ``st`` (a stat of the path now) is the file these bytes came from."""
        return (
            st.st_ino == self.inode and st.st_mtime_ns == self.mtime_ns and st.st_size == self.size
        )


def plain_request(request: web.BaseRequest) -> bool:
    """No range or conditional headers: the whole file, 200, as it is now."""
    headers = request.headers
    return not any(name in headers for name in CONDITIONAL)


def read_file(path: str, max_size: int) -> CachedFile | None:
    """``path`` read whole (blocking), or None: not a regular file, over ``max_size``, it has a
    precompressed sibling, or it changed while being read."""
    for extension in _PRECOMPRESSED:
        if os.path.lexists(path + extension):
            return None
    with open(path, "rb", buffering=0) as file:
        before = os.fstat(file.fileno())
        if not stat.S_ISREG(before.st_mode) or before.st_size > max_size:
            return None
        body = file.readall()
        after = os.fstat(file.fileno())
    if (
        len(body) != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
    ):
        return None
    headers = {  # as FileResponse writes them
        hdrs.ETAG: f'"{before.st_mtime_ns:x}-{before.st_size:x}"',
        hdrs.LAST_MODIFIED: time.strftime(
            "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(math.ceil(before.st_mtime))
        ),
        hdrs.CONTENT_LENGTH: str(before.st_size),
        hdrs.ACCEPT_RANGES: "bytes",
    }
    return CachedFile(body, before.st_ino, before.st_mtime_ns, before.st_size, headers)


class FileCache:
    """path → :class:`CachedFile`, least recently served evicted past ``max_bytes``."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, max_entry: int = DEFAULT_MAX_ENTRY
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry = min(max_entry, max_bytes)
        self.size = 0
        """Bytes of bodies held."""
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, CachedFile] = OrderedDict()
        self._loading: dict[str, asyncio.Future[CachedFile | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def cacheable(self, st: os.stat_result) -> bool:
        return 0 < st.st_size <= self.max_entry

    def get(self, path: str, st: os.stat_result) -> CachedFile | None:
        """The cached bytes of ``path`` if ``st`` (a fresh stat) shows the same file."""
        entry = self._entries.get(path)
        if entry is None:
            return None
        if not entry.matches(st):
            self.discard(path)
            return None
        self._entries.move_to_end(path)
        self.hits += 1
        return entry

    async def load(self, path: str) -> CachedFile | None:
        """Read ``path`` in the default executor (one read however many ask at once) and keep
        it; None if it cannot be cached (see :func:`read_file`) or cannot be opened."""
        future = self._loading.get(path)
        if future is None:
            self.misses += 1
            future = asyncio.get_running_loop().run_in_executor(
                None, read_file, path, self.max_entry
            )
            self._loading[path] = future
            future.add_done_callback(lambda done: self._loaded(path, done))
        try:
            return await asyncio.shield(future)
        except OSError:
            return None

    def _loaded(self, path: str, future: asyncio.Future[CachedFile | None]) -> None:
        del self._loading[path]
        if not future.cancelled() and future.exception() is None:
            entry = future.result()
            if entry is not None:
                self._put(path, entry)

    def discard(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self.size -= entry.size

    def _put(self, path: str, entry: CachedFile) -> None:
        self.discard(path)
        self._entries[path] = entry
        self.size += entry.size
        while self.size > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.size -= oldest.size


class MemoryFileResponse(web.StreamResponse):
    """A 200 with a cached file's bytes and the headers ``FileResponse`` would send for it
    (``ETag``, ``Last-Modified``, ``Accept-Ranges``, ``Content-Length``); no body for HEAD.

    ``on_sent`` is called once the whole body of a GET left this process (the transport's
    buffer drained into the socket), never for a HEAD or a client that went away first.
    """

    def __init__(
        self,
        entry: CachedFile,
        headers: Mapping[str, str],
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(headers=headers)
        self.headers.update(entry.headers)
        self._entry = entry
        self._on_sent = on_sent
        if entry.size < COALESCE_BELOW:
            self._send_headers_immediately = False  # headers and body in one write

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        if writer is None or request.method == hdrs.METH_HEAD:
            return writer
        await self.write_eof(self._entry.body)
        if (
            self._on_sent is not None
            and request.method == hdrs.METH_GET
            and await _drained(request, writer)
        ):
            self._on_sent()
        return writer


async def _drained(request: web.BaseRequest, writer: AbstractStreamWriter) -> bool:
    """Wait until the transport handed everything written to the socket; False if the
    connection was lost first."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return False
    if not transport.get_write_buffer_size():
        return True
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)  # pause writing until the buffer is empty
    try:
        await writer.drain()
    except ConnectionError:
        return False
    finally:
        transport.set_write_buffer_limits(high=high, low=low)
    return request.transport is not None and not transport.is_closing()
