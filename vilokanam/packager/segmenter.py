"""One segment's packets → the bytes of a CMAF ``.m4s`` (plus its init segment) or a ``.ts``.

Each segment is muxed on its own, so it is complete the moment its packets are, and keeps the
stream's timeline: fMP4 fragments carry the first decode time in ``tfdt``
(:mod:`vilokanam.packager.fmp4`); MPEG-TS segments come from a fresh libavformat muxer each,
starting with PAT/PMT and keeping the timestamps (plus the muxer's constant 1.4 s delay).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import av
from av.stream import Stream

from vilokanam.packager.fmp4 import fragment, init_segment, read_tracks, uses_annexb
from vilokanam.packager.packets import MediaPacket

SegmentFormat = Literal["fmp4", "mpegts"]
EXTENSIONS: dict[str, str] = {"fmp4": "m4s", "mpegts": "ts"}


class SegmentMuxer:
    """Segments of fixed tracks; ``templates`` give each track's codec parameters."""

    def __init__(self, fmt: SegmentFormat, templates: Sequence[Stream]) -> None:
        if fmt not in EXTENSIONS:
            raise ValueError(f"unknown segment format {fmt!r}")
        if not templates:
            raise ValueError("a segment needs at least one track")
        self.format = fmt
        self.templates = list(templates)
        self.init: bytes | None = None
        """The fMP4 initialization segment (ftyp + moov); None for MPEG-TS."""
        if fmt == "fmp4":
            self.init = init_segment(self.templates)
            self._tracks = [
                replace(track, annexb=uses_annexb(template))
                for track, template in zip(read_tracks(self.init), self.templates, strict=True)
            ]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    def mux(self, tracks: Sequence[Sequence[MediaPacket]], sequence_number: int) -> bytes:
        """One segment from each track's packets (decode order), tracks as in ``templates``."""
        if len(tracks) != len(self.templates):
            raise ValueError(f"{len(tracks)} tracks for {len(self.templates)} templates")
        if self.format == "fmp4":
            return fragment(self._tracks, tracks, sequence_number)
        return self._mux_ts(tracks)

    def _mux_ts(self, tracks: Sequence[Sequence[MediaPacket]]) -> bytes:
        ordered = [(p.decode_time, index, p) for index, track in enumerate(tracks) for p in track]
        ordered.sort(key=lambda item: item[:2])
        buffer = io.BytesIO()
        output = av.open(buffer, "w", format="mpegts")
        try:
            streams = [output.add_stream_from_template(t) for t in self.templates]
            for _, index, packet in ordered:
                output.mux(packet.to_av(streams[index]))
        finally:
            output.close()
        return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file: readers never see a partial file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
