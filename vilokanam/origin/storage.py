"""Where media and playlists live: one small interface, a local-disk implementation.

Workers write segment files into the local media tree themselves (complete files, renamed
into place); the packager then calls :meth:`Storage.publish_segment` before it publishes any
playlist naming that segment, so a backend that copies elsewhere (S3) keeps the write order.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    root: Path

    async def publish_segment(self, relpath: str) -> None:
        """Make a finished segment (or init segment) under ``root`` available to players."""

    async def publish_playlist(self, relpath: str, text: str) -> None:
        """Replace a playlist atomically: readers see the old or the new one, never half."""

    async def delete(self, relpaths: list[str]) -> None:
        """Remove segments that no playlist names any more."""


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


class LocalStorage:
    """Media on local disk under ``root``; the origin serves it from there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    async def publish_segment(self, relpath: str) -> None:
        if not (self.root / relpath).is_file():
            raise FileNotFoundError(f"segment {relpath} was announced but is not on disk")

    async def publish_playlist(self, relpath: str, text: str) -> None:
        await asyncio.to_thread(write_atomically, self.root / relpath, text.encode())

    async def delete(self, relpaths: list[str]) -> None:
        def remove() -> None:
            for relpath in relpaths:
                (self.root / relpath).unlink(missing_ok=True)

        await asyncio.to_thread(remove)
