"""After a crash: the streams the last run left open are ended, recordings become VODs.

A server killed mid-stream leaves media playlists without ENDLIST, so players (and a CDN in
front of S3) would poll them forever. At start-up, for each such stream:

- a recording (its folder has the packager's journal, ``recording.jsonl``): the sequences the
  journal has queued but never listed (S3 was down: their uploads were waiting) are listed after
  the others as live listing would have listed them, each whose files are all still on local
  disk (one that is not is left out, and the next one starts a discontinuity); then every
  segment and init segment listed that is still only on local disk is published (for S3:
  uploaded, never given up for spool room, so nothing spooled is lost; if S3 refuses to list
  the bucket, every listed file on local disk is uploaded again), then each rendition's VOD
  playlist is rebuilt from the journal exactly as :meth:`LivePackager.finish` makes it, then
  the master playlist left on disk is published again, and ``on_recording`` gets the VOD's
  figures. If a file could not be published, the recording is left for the next start instead
  (no VOD with a hole). The journal is only read, so running this twice gives the same
  playlists and the same figures; the work that grows with its length runs in a thread;
- any other stream: each open playlist's segments still on local disk are published, then the
  playlist is republished with ENDLIST. A playlist that has ENDLIST is left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vilokanam.origin.gate import map_uris
from vilokanam.origin.storage import SegmentDropped, Storage
from vilokanam.packager.live import MASTER, media_playlist_path
from vilokanam.packager.recording import (
    JOURNAL,
    JournaledRecording,
    RecordingSummary,
    read_journal,
)

log = logging.getLogger(__name__)

ENDLIST = "#EXT-X-ENDLIST"
PUBLISH_CONCURRENCY = 8
"""Files published at once: enough to keep S3 busy, few enough not to overflow its spool."""


@dataclass(frozen=True)
class RecoveredRecording:
    """A recording a crash interrupted, made a VOD again: for the VOD catalogue."""

    session_id: int
    renditions: list[str]
    duration_ms: int
    segments: int
    size_bytes: int
    thumbnail: bool


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
                # S3: what the crash left unsent; the playlist names it, so never given up
                await storage.publish_segment(relpath, droppable=False)
        await storage.publish_playlist(
            f"{prefix}/{rendition}/index.m3u8", text.rstrip("\n") + f"\n{ENDLIST}\n"
        )
        ended += 1
    return ended


def _recorded_files(prefix: str, recording: JournaledRecording) -> list[str]:
    """Every init segment and segment the journal lists, as relpaths, in listing order."""
    files: dict[str, None] = {}
    for name, entries in recording.archives.items():
        for entry in entries:
            if entry.init_uri:
                files[f"{prefix}/{name}/{entry.init_uri}"] = None
            files[f"{prefix}/{name}/{entry.uri}"] = None
    return list(files)


async def _publish_files(storage: Storage, prefix: str, relpaths: list[str]) -> int:
    """Publish what players cannot get yet, a few at a time and never given up for room; how
    many files could not be published (logged). A file gone everywhere is logged only."""
    published: set[str] | None
    try:
        published = await storage.published(prefix)
    except Exception as exc:  # S3 refuses the listing: sending a file again is harmless
        log.error("%s: could not list what is published (%s); publishing every recorded file "
                  "still on local disk", prefix, exc)  # fmt: skip
        published = None

    def on_disk() -> tuple[list[str], int]:
        waiting = [r for r in relpaths if published is None or r not in published]
        local = [r for r in waiting if (storage.root / r).is_file()]
        return local, len(waiting) - len(local)

    local, missing = await asyncio.to_thread(on_disk)
    if missing and published is not None:  # unlisted: those not here may be in the bucket
        log.error("%s: %d recorded file(s) are neither published nor on local disk",
                  prefix, missing)  # fmt: skip
    gate = asyncio.Semaphore(PUBLISH_CONCURRENCY)
    failed: list[str] = []

    async def publish(relpath: str) -> None:
        async with gate:
            try:
                await storage.publish_segment(relpath, droppable=False)
            except (OSError, SegmentDropped) as exc:
                if not failed:
                    log.error("%s: could not publish %s: %s", prefix, relpath, exc)
                failed.append(relpath)

    await asyncio.gather(*(publish(relpath) for relpath in local))
    return len(failed)


async def rebuild_recording(
    storage: Storage, prefix: str, recording: JournaledRecording
) -> RecordingSummary | None:
    """Publish a journaled recording's files, its VOD playlists, then its master playlist;
    the VOD's figures (None: a recorded file could not be published, or no master playlist on
    disk, so no whole VOD)."""
    if recording.pending:
        folder = storage.root / prefix
        recording = await asyncio.to_thread(
            recording.with_pending, lambda relpath: (folder / relpath).is_file()
        )
    files = await asyncio.to_thread(_recorded_files, prefix, recording)
    failed = await _publish_files(storage, prefix, files)
    if failed:
        log.error("%s: %d recorded file(s) could not be published; the recording is not "
                  "catalogued yet, the next start retries", prefix, failed)  # fmt: skip
        return None
    playlists = await asyncio.to_thread(recording.playlists)  # ~0.6 s a rendition for 24 h
    for name, text in playlists.items():
        await storage.publish_playlist(f"{prefix}/{media_playlist_path(name)}", text)
    master = storage.root / prefix / MASTER
    try:
        text = await asyncio.to_thread(master.read_text, "utf-8")
    except FileNotFoundError:
        log.error("%s: the recording has no master playlist; not kept as a VOD", prefix)
        return None
    await storage.publish_playlist(f"{prefix}/{MASTER}", text)
    return await asyncio.to_thread(recording.summary)


async def recover_session(storage: Storage, session_id: int) -> RecoveredRecording | None:
    """End one stream a crash left open; the VOD it left, if it was recorded."""
    prefix = f"streams/{session_id}"
    if not await asyncio.to_thread(Path(storage.root / prefix).is_dir):
        return None
    recording = await asyncio.to_thread(read_journal, storage.root / prefix / JOURNAL)
    if recording is None:
        ended = await end_open_playlists(storage, prefix)
        if ended:
            log.info("%s: ended %d playlist(s) left open by a crash", prefix, ended)
        return None
    summary = await rebuild_recording(storage, prefix, recording)
    if summary is None:
        return None
    log.info("%s: recording rebuilt as a VOD after a crash (%d segments)", prefix,
             summary.segments)  # fmt: skip
    return RecoveredRecording(session_id=session_id, **asdict(summary))


async def recover_sessions(
    storage: Storage,
    session_ids: list[int],
    on_recording: Callable[[RecoveredRecording], Awaitable[None]] | None = None,
) -> None:
    """:func:`recover_session` for each stream a crash left open; ``on_recording`` is awaited
    for each recording rebuilt, after its playlists are published. Failures are logged."""
    for session_id in session_ids:
        try:
            recovered = await recover_session(storage, session_id)
        except Exception:
            log.exception("streams/%d: could not end what a crash left open", session_id)
            continue
        if recovered is None or on_recording is None:
            continue
        try:
            await on_recording(recovered)
        except Exception:
            log.exception("streams/%d: saving the recovered recording failed", session_id)
