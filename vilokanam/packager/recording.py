"""A recording: its VOD playlists and figures, and the journal that lets a crash end in them.

A recording keeps a journal, ``{prefix}/recording.jsonl`` under ``storage.root`` (local
only, never published), so that a server killed mid-stream can still make the VOD on its next
start (:mod:`vilokanam.packager.recovery`). One JSON object per line, appended once a sequence is
listed in every rendition (one ``write``: a kill leaves at most a torn last line, ignored):

- ``{"type": "header", "version": 1, "target_duration": 2.0, "ladder": ["source", "240p"]}``:
  before the first sequence, and again whenever either value changes (the last one counts);
- ``{"type": "sequence", "sequence": 7, "segments": {"source": {"uri": "s1-seg-7.m4s",
  "duration": 2.0, "program_date_time": "2026-01-01T00:00:14+00:00", "init_uri":
  "s1-init-0.mp4", "discontinuity": false, "size": 81234}, ...}}``: the sequence's entry in each
  rendition's playlist (URIs relative to the rendition folder) and its file size;
- ``{"type": "thumbnail"}``: a thumbnail was published (written once, never before the first
  sequence: a thumbnail published earlier is written with it, so every journal line describes a
  VOD; journals from before this rule may have it first, and are read all the same).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from vilokanam.packager.playlist import MediaPlaylist, SegmentEntry

log = logging.getLogger(__name__)

JOURNAL = "recording.jsonl"
JOURNAL_VERSION = 1
VOD_WINDOW = 10**9
"""A window no recording reaches: the VOD playlist keeps every segment."""


@dataclass(frozen=True)
class RecordingSummary:
    """What a recorded stream left: for the VOD catalogue."""

    renditions: list[str]
    duration_ms: int
    segments: int
    size_bytes: int
    thumbnail: bool


def summarize(
    names: list[str],
    archives: Mapping[str, Sequence[SegmentEntry]],
    sizes: Mapping[str, int],
    thumbnail: bool,
) -> RecordingSummary | None:
    """The VOD of a recording whose ladder is ``names`` (None: nothing listed)."""
    first = archives.get(names[0]) if names else None
    if not first:
        return None
    return RecordingSummary(
        renditions=names,
        duration_ms=round(sum(entry.duration for entry in first) * 1000),
        segments=len(first),
        size_bytes=sum(sizes.get(name, 0) for name in names),
        thumbnail=thumbnail,
    )


def vod_playlist(target_duration: float, entries: Iterable[SegmentEntry]) -> MediaPlaylist:
    """Every segment a rendition listed, as a VOD playlist (PLAYLIST-TYPE:VOD, ENDLIST)."""
    playlist = MediaPlaylist(target_duration=target_duration, window=VOD_WINDOW, vod=True)
    for entry in entries:
        playlist.add(entry)
    playlist.ended = True
    return playlist


@dataclass
class JournaledRecording:
    """A recording as its journal tells it: what ending the stream makes a VOD of."""

    target_duration: float = 0.0
    ladder: list[str] = field(default_factory=list)
    archives: dict[str, list[SegmentEntry]] = field(default_factory=dict)
    """Each rendition's listed entries, in order."""
    sizes: dict[str, int] = field(default_factory=dict)
    thumbnail: bool = False

    def summary(self) -> RecordingSummary | None:
        return summarize(self.ladder, self.archives, self.sizes, self.thumbnail)

    def playlists(self) -> dict[str, str]:
        """Each rendition's VOD playlist text, by rendition."""
        return {
            name: vod_playlist(self.target_duration, entries).render()
            for name, entries in self.archives.items()
        }


def read_journal(path: Path) -> JournaledRecording | None:
    """The recording a journal describes, up to its first torn or invalid line (None: no
    sequence in it, or no journal)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    recording = JournaledRecording()
    for line in data.split(b"\n")[:-1]:  # after the last newline: empty, or a torn line
        try:
            _apply(recording, json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError):
            break
    return recording if recording.archives else None


def _apply(recording: JournaledRecording, record: dict[str, Any]) -> None:
    """One journal line; raises on anything :class:`JournalWriter` never writes."""
    kind = record["type"]
    if kind == "header":
        if record["version"] != JOURNAL_VERSION:
            raise ValueError(f"journal version {record['version']}")
        recording.target_duration = float(record["target_duration"])
        recording.ladder = [str(name) for name in record["ladder"]]
    elif kind == "sequence":
        if not recording.ladder:
            raise ValueError("a sequence before the header")
        sequence = int(record["sequence"])
        entries = {name: _entry(sequence, fields) for name, fields in record["segments"].items()}
        for name in entries:
            archive = recording.archives.get(name)
            if archive and archive[-1].sequence >= sequence:
                raise ValueError(f"sequence {sequence} is not after {archive[-1].sequence}")
        for name, (entry, size) in entries.items():
            recording.archives.setdefault(name, []).append(entry)
            recording.sizes[name] = recording.sizes.get(name, 0) + size
    elif kind == "thumbnail":
        recording.thumbnail = True
    else:
        raise ValueError(f"unknown journal line {kind!r}")


def _entry_record(entry: SegmentEntry, size: int) -> dict[str, Any]:
    return {
        "uri": entry.uri,
        "duration": entry.duration,
        "program_date_time": entry.program_date_time.isoformat(),
        "init_uri": entry.init_uri,
        "discontinuity": entry.discontinuity,
        "size": size,
    }


def _entry(sequence: int, fields: dict[str, Any]) -> tuple[SegmentEntry, int]:
    init_uri = fields["init_uri"]
    entry = SegmentEntry(
        sequence=sequence,
        uri=str(fields["uri"]),
        duration=float(fields["duration"]),
        program_date_time=datetime.fromisoformat(fields["program_date_time"]),
        init_uri=None if init_uri is None else str(init_uri),
        discontinuity=bool(fields["discontinuity"]),
    )
    return entry, int(fields["size"])


class JournalWriter:
    """Appends a recording's journal, one ``write`` per listed sequence; an append the disk
    refuses gives the journal up (logged once), never the stream.

    Synchronous on purpose: one small append per sequence takes ~10 µs (open, write, close); a
    thread hop costs more. The page cache keeps it across a kill -9.
    """

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._header: tuple[float, list[str]] | None = None
        """What the last header line says (None: no sequence journaled yet)."""
        self._thumbnail = False
        """A thumbnail was published before any sequence: written with the first one."""
        self._failed = False

    def sequence(
        self,
        number: int,
        segments: Mapping[str, tuple[SegmentEntry, int]],
        target_duration: float,
        ladder: list[str],
    ) -> None:
        """A sequence listed: each rendition's entry and file size (a header first if the
        target duration or the ladder changed)."""
        if not segments:
            return
        records: list[dict[str, Any]] = []
        header = (target_duration, ladder)
        if header != self._header:
            records.append({"type": "header", "version": JOURNAL_VERSION,
                            "target_duration": target_duration, "ladder": ladder})  # fmt: skip
        records.append({
            "type": "sequence", "sequence": number,
            "segments": {name: _entry_record(*item) for name, item in segments.items()},
        })  # fmt: skip
        thumbnail = self._thumbnail
        if thumbnail:
            records.append({"type": "thumbnail"})
        if self._append(records):
            self._header = header
            self._thumbnail = False

    def thumbnail(self) -> None:
        """The first thumbnail was published (never journaled before the first sequence)."""
        if self._header is None:
            self._thumbnail = True
        else:
            self._append([{"type": "thumbnail"}])

    def _append(self, records: list[dict[str, Any]]) -> bool:
        if self._failed:
            return False
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab", buffering=0) as handle:
                written = handle.write(data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            self._failed = True  # a torn line may end it: nothing after it
            log.error("%s: recording journal given up (%s): a crash would cut the VOD here",
                      self.name, exc)  # fmt: skip
            return False
        return True
