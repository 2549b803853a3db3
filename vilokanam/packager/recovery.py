"""After a crash: the playlists of streams the last run left open get EXT-X-ENDLIST.

A server killed mid-stream leaves media playlists without ENDLIST, so players (and a CDN in
front of S3) would poll them forever. At start-up, each such playlist's segments still on
local disk are published again (for S3: uploaded, so nothing spooled is lost), then the
playlist is republished with ENDLIST. Idempotent: a playlist that has ENDLIST is left alone.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from vilokanam.origin.gate import map_uris
from vilokanam.origin.storage import Storage

log = logging.getLogger(__name__)

ENDLIST = "#EXT-X-ENDLIST"


def _named_files(text: str) -> list[str]:
    """Every URI of a media playlist (segments and ``EXT-X-MAP``), in order."""
    names: list[str] = []
    map_uris(text, lambda uri: names.append(uri) or uri)
    return [name for name in dict.fromkeys(names) if "://" not in name and "/" not in name]


async def end_open_playlists(storage: Storage, prefix: str) -> int:
    """End every media playlist under ``prefix`` that a crash left open; how many."""
    folder = storage.root / prefix
    playlists = await asyncio.to_thread(lambda: sorted(folder.glob("*/index.m3u8")))
    ended = 0
    for path in playlists:
        text = await asyncio.to_thread(path.read_text, "utf-8", "replace")
        if ENDLIST in text:
            continue
        rendition = path.parent.name
        for name in _named_files(text):
            relpath = f"{prefix}/{rendition}/{name}"
            if await asyncio.to_thread((storage.root / relpath).is_file):
                await storage.publish_segment(relpath)  # S3: what the crash left unsent
        await storage.publish_playlist(
            f"{prefix}/{rendition}/index.m3u8", text.rstrip("\n") + f"\n{ENDLIST}\n"
        )
        ended += 1
    return ended


async def recover_sessions(storage: Storage, session_ids: list[int]) -> None:
    """:func:`end_open_playlists` for each stream a crash left open; failures are logged."""
    for session_id in session_ids:
        prefix = f"streams/{session_id}"
        if not await asyncio.to_thread(Path(storage.root / prefix).is_dir):
            continue
        try:
            ended = await end_open_playlists(storage, prefix)
        except Exception:
            log.exception("%s: could not end the playlists left open by a crash", prefix)
            continue
        if ended:
            log.info("%s: ended %d playlist(s) left open by a crash", prefix, ended)
