"""Where media and playlists live: one small interface, a local-disk implementation.

Workers write segment files into the local media tree themselves (complete files, renamed
into place); the packager then calls :meth:`Storage.publish_segment` and waits for it before it
publishes any playlist naming that segment, so a backend that copies elsewhere (S3,
``vilokanam/origin/s3.py``) keeps the write order. The local tree is also what this server's
origin serves, and, for S3, the spool of files waiting for upload.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
}
PLAYLIST_CACHE = "no-cache, no-store"
SEGMENT_CACHE = "public, max-age=31536000, immutable"
THUMBNAIL_CACHE = "public, max-age=10"
"""Thumbnails are replaced in place every ``recording.thumbnail_interval`` seconds."""


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(name).suffix, "application/octet-stream")


def cache_control(name: str) -> str:
    """Playlists are never cached; segments never change; thumbnails briefly."""
    if name.endswith(".m3u8"):
        return PLAYLIST_CACHE
    if name.endswith(".jpg"):
        return THUMBNAIL_CACHE
    return SEGMENT_CACHE


class SegmentDropped(Exception):
    """A segment was given up before players could get it (the S3 spool overflowed)."""


class Storage(Protocol):
    root: Path
    """The local media folder: workers write here; the origin serves from here."""
    kind: str
    """``local`` or ``s3``: recorded with each VOD."""

    async def start(self) -> None:
        """Open connections, start upload workers."""

    async def close(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` seconds for queued remote writes, then stop."""

    async def publish_segment(self, relpath: str, *, droppable: bool = True) -> None:
        """Make a finished file under ``root`` (segment, init segment, thumbnail) available to
        players; returns once it is (uploaded, for S3). Raises :class:`SegmentDropped`, unless
        ``droppable`` is False (crash recovery: a recorded file is never given up for room)."""

    async def publish_playlist(self, relpath: str, text: str) -> None:
        """Replace a playlist atomically (readers see the old or the new one, never half).
        A remote copy is written after every segment published before this call (a master
        playlist: after every segment and playlist of its stream); when several versions
        queue up, only the newest is sent."""

    async def delete(self, relpaths: list[str]) -> None:
        """Remove segments that no playlist names any more, locally and remotely (remote
        deletes wait until playlists published before this call are written)."""

    async def release_local(self, relpaths: list[str]) -> None:
        """The local copies are no longer needed here (the remote store keeps them, e.g. a
        recording's segments that left the live window)."""

    async def delete_prefix(self, prefix: str) -> int:
        """Delete everything under ``prefix`` (a VOD) locally and remotely; files removed.
        Raises (OSError, or the remote store's error) if anything may be left."""

    async def published(self, prefix: str) -> set[str]:
        """Relpaths under ``prefix`` that players can get already, from one listing (the
        bucket's, for S3): what a recovery need not publish again. May raise (S3 refuses the
        listing)."""

    def public_url(self, relpath: str) -> str | None:
        """The absolute URL players should use for ``relpath`` (the CDN in front of the
        bucket), or None: relative URLs on this origin."""

    async def flush(self, timeout: float, prefix: str | None = None) -> bool:
        """Wait until every remote write queued so far (under ``prefix``: one stream's) is
        done; False if ``timeout`` passed first."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_prefix(root: Path, prefix: str) -> Path:
    """``root / prefix``, refusing anything that would leave ``root`` or name it whole."""
    parts = PurePosixPath(prefix).parts
    if not parts or any(part in ("", ".", "..") or part.startswith("/") for part in parts):
        raise ValueError(f"unsafe storage prefix {prefix!r}")
    return root.joinpath(*parts)


class LocalStorage:
    """Media on local disk under ``root``; the origin serves it from there."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        return None

    async def close(self, grace: float = 0.0) -> None:
        return None

    async def publish_segment(self, relpath: str, *, droppable: bool = True) -> None:
        if not (self.root / relpath).is_file():
            raise FileNotFoundError(f"segment {relpath} was announced but is not on disk")

    async def publish_playlist(self, relpath: str, text: str) -> None:
        await asyncio.to_thread(write_atomically, self.root / relpath, text.encode())

    async def delete(self, relpaths: list[str]) -> None:
        def remove() -> None:
            for relpath in relpaths:
                (self.root / relpath).unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    async def release_local(self, relpaths: list[str]) -> None:
        return None  # the local copy is the only one

    async def delete_prefix(self, prefix: str) -> int:
        folder = safe_prefix(self.root, prefix)

        def remove() -> int:
            count = sum(1 for path in folder.rglob("*") if path.is_file())
            shutil.rmtree(folder, ignore_errors=True)  # as much as it can, then check
            if os.path.lexists(folder):
                raise OSError(f"{folder} could not be removed completely")
            return count

        return await asyncio.to_thread(remove)

    async def published(self, prefix: str) -> set[str]:
        folder = safe_prefix(self.root, prefix)

        def listing() -> set[str]:
            return {p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file()}

        return await asyncio.to_thread(listing)  # served from here: on disk is published

    def public_url(self, relpath: str) -> str | None:
        return None

    async def flush(self, timeout: float, prefix: str | None = None) -> bool:
        return True
