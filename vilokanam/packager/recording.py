"""A recording: its VOD playlists and figures, and the journal that lets a crash end in them.

A recording keeps a journal, ``{prefix}/recording.jsonl`` under ``storage.root`` (local
only, never published), so that a server killed mid-stream can still make the VOD on its next
start (:mod:`vilokanam.packager.recovery`). One JSON object per line, each appended with one
``write`` (a kill leaves at most a torn last line, ignored):

- ``{"type": "header", "version": 1, "target_duration": 2.0, "ladder": ["source", "240p"]}``:
  before the first sequence (queued or listed), and again whenever either value changes (the
  last one counts);
- ``{"type": "queued", "sequence": 7, "epoch": 1, "segments": {"source": {"uri":
  "s1-seg-7.m4s", "duration": 2.0, "program_date_time": "2026-01-01T00:00:14+00:00",
  "init_uri": "s1-init-0.mp4", "size": 81234}, ...}}``: every rendition has written the
  sequence and its files are being published (an S3 outage may hold them for long): its entry in
  each rendition's playlist as listing it will make it, but for the discontinuity, and the
  worker epoch it belongs to. A crash before it is listed leaves its files on local disk:
  recovery lists it if they still are all there;
- ``{"type": "sequence", "sequence": 7, "epoch": 1, "segments": {"source": {"uri": ...,
  "discontinuity": false, "size": 81234}, ...}}``: the sequence was listed; its entry in each
  rendition's playlist (URIs relative to the rendition folder) and its file size. Sequences are
  listed in order, so it settles every sequence queued up to it;
- ``{"type": "dropped", "sequence": 8}``: a queued sequence's files could not be published; it
  is in no playlist, and the next sequence listed starts with a discontinuity;
- ``{"type": "thumbnail"}``: a thumbnail was published (written once, never before the first
  sequence: a thumbnail published earlier is written with it, so every journal line describes a
  VOD; journals from before this rule may have it first, and are read all the same).

Journals from before "queued" lines (no "epoch", no "queued" nor "dropped") read as they did.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class PendingSequence:
    """A sequence queued, never listed nor dropped: its files may still be on local disk."""

    sequence: int
    epoch: int
    segments: dict[str, tuple[SegmentEntry, int]]
    """Each rendition's entry (no discontinuity yet) and file size."""
    after_gap: bool = False
    """A sequence dropped since the entry before it: listing it starts a discontinuity."""


@dataclass
class JournaledRecording:
    """A recording as its journal tells it: what ending the stream makes a VOD of."""

    target_duration: float = 0.0
    ladder: list[str] = field(default_factory=list)
    archives: dict[str, list[SegmentEntry]] = field(default_factory=dict)
    """Each rendition's listed entries, in order."""
    sizes: dict[str, int] = field(default_factory=dict)
    thumbnail: bool = False
    epoch: int | None = None
    """The worker epoch of the last sequence listed (None: none, or an older journal)."""
    pending: list[PendingSequence] = field(default_factory=list)
    """Sequences queued after the last one listed, in order (read_journal fills it)."""
    _queued: dict[int, PendingSequence] = field(default_factory=dict, repr=False)
    _dropped: set[int] = field(default_factory=set, repr=False)

    def with_pending(self, available: Callable[[str], bool]) -> JournaledRecording:
        """This recording with its pending sequences listed, as live listing would have listed
        them, each whose files (``"{rendition}/{uri}"``, init segments too) are all
        ``available``; one that is not is skipped, and the next one starts a discontinuity."""
        archives = {name: list(entries) for name, entries in self.archives.items()}
        sizes = dict(self.sizes)
        epoch, gap = self.epoch, False
        for item in self.pending:
            files = [f"{name}/{entry.uri}" for name, (entry, _) in item.segments.items()]
            files += [f"{n}/{e.init_uri}" for n, (e, _) in item.segments.items() if e.init_uri]
            if not all(available(relpath) for relpath in files):
                gap = True
                continue
            discontinuity = gap or item.after_gap or (epoch is not None and item.epoch != epoch)
            for name, (entry, size) in item.segments.items():
                archives.setdefault(name, []).append(replace(entry, discontinuity=discontinuity))
                sizes[name] = sizes.get(name, 0) + size
            epoch, gap = item.epoch, False
        return replace(self, archives=archives, sizes=sizes, epoch=epoch, pending=[],
                       _queued={}, _dropped=set())  # fmt: skip

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
    previous = _last_listed(recording)
    for number, item in sorted(recording._queued.items()):
        gap = any(previous < dropped < number for dropped in recording._dropped)
        recording.pending.append(replace(item, after_gap=gap))
        previous = number
    recording._queued.clear()
    recording._dropped.clear()
    return recording if recording.archives or recording.pending else None


def _last_listed(recording: JournaledRecording) -> int:
    return max((a[-1].sequence for a in recording.archives.values() if a), default=-1)


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
        epoch = record.get("epoch")  # None: a journal from before "queued" lines
        recording.epoch = None if epoch is None else int(epoch)
        for number in [n for n in recording._queued if n <= sequence]:  # listed in order
            del recording._queued[number]
    elif kind == "queued":
        if not recording.ladder:
            raise ValueError("a sequence before the header")
        sequence = int(record["sequence"])
        if sequence <= max(_last_listed(recording), *recording._queued, -1):
            raise ValueError(f"sequence {sequence} queued again")
        segments = {name: _entry(sequence, fields) for name, fields in record["segments"].items()}
        recording._queued[sequence] = PendingSequence(sequence, int(record["epoch"]), segments)
    elif kind == "dropped":
        sequence = int(record["sequence"])
        recording._queued.pop(sequence, None)
        recording._dropped.add(sequence)
    elif kind == "thumbnail":
        recording.thumbnail = True
    else:
        raise ValueError(f"unknown journal line {kind!r}")


def _entry_record(entry: SegmentEntry, size: int, *, listed: bool = True) -> dict[str, Any]:
    record: dict[str, Any] = {
        "uri": entry.uri,
        "duration": entry.duration,
        "program_date_time": entry.program_date_time.isoformat(),
        "init_uri": entry.init_uri,
        "discontinuity": entry.discontinuity,
        "size": size,
    }
    if not listed:  # known only once listed
        del record["discontinuity"]
    return record


def _entry(sequence: int, fields: dict[str, Any]) -> tuple[SegmentEntry, int]:
    init_uri = fields["init_uri"]
    entry = SegmentEntry(
        sequence=sequence,
        uri=str(fields["uri"]),
        duration=float(fields["duration"]),
        program_date_time=datetime.fromisoformat(fields["program_date_time"]),
        init_uri=None if init_uri is None else str(init_uri),
        discontinuity=bool(fields.get("discontinuity", False)),
    )
    return entry, int(fields["size"])


class JournalWriter:
    """Appends a recording's journal, one ``write`` per queued, listed or dropped sequence; an
    append the disk refuses gives the journal up (logged once), never the stream.

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

    def queued(
        self,
        number: int,
        epoch: int,
        segments: Mapping[str, tuple[SegmentEntry, int]],
        target_duration: float,
        ladder: list[str],
    ) -> None:
        """A sequence queued for listing: each rendition's entry as listing will make it (but
        for the discontinuity) and file size (a header first if the target duration or the
        ladder changed)."""
        records = {name: _entry_record(*item, listed=False) for name, item in segments.items()}
        record = {"type": "queued", "sequence": number, "epoch": epoch, "segments": records}
        self._write(record, segments, target_duration, ladder)

    def sequence(
        self,
        number: int,
        epoch: int,
        segments: Mapping[str, tuple[SegmentEntry, int]],
        target_duration: float,
        ladder: list[str],
    ) -> None:
        """A sequence listed: each rendition's entry and file size (a header first if the
        target duration or the ladder changed)."""
        records = {name: _entry_record(*item) for name, item in segments.items()}
        record = {"type": "sequence", "sequence": number, "epoch": epoch, "segments": records}
        self._write(record, segments, target_duration, ladder)

    def dropped(self, number: int) -> None:
        """A queued sequence's files could not be published: in no playlist."""
        if self._header is not None:  # else never journaled as queued
            self._append([{"type": "dropped", "sequence": number}])

    def _write(
        self,
        record: dict[str, Any],
        segments: Mapping[str, object],
        target_duration: float,
        ladder: list[str],
    ) -> None:
        if not segments:
            return
        records: list[dict[str, Any]] = []
        header = (target_duration, ladder)
        if header != self._header:
            records.append({"type": "header", "version": JOURNAL_VERSION,
                            "target_duration": target_duration, "ladder": ladder})  # fmt: skip
        records.append(record)
        thumbnail = self._thumbnail
        if thumbnail:
            records.append({"type": "thumbnail"})
        if self._append(records):
            self._header = header
            self._thumbnail = False

    def thumbnail(self) -> None:
        """The first thumbnail was published (never journaled before the first sequence,
        queued or listed)."""
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
