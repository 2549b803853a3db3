"""One rendition's output: segment files, its init segment and its events.

Video packets arrive tagged with their segment index (from the source or from a rung's encoder)
and :class:`~vilokanam.transcode.timeline.Cut` objects bring each segment's time range and
audio. A segment is written once both are complete, in sequence order; the file is in place
before the event that names it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from vilokanam.packager.packets import MediaPacket
from vilokanam.packager.segmenter import SegmentMuxer, write_atomic
from vilokanam.transcode.events import EventWriter
from vilokanam.transcode.timeline import Cut


@dataclass(frozen=True)
class RenditionInfo:
    name: str
    codecs: str
    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    bandwidth: int = 0
    """Nominal peak bits/s."""
    measure_bandwidth: bool = False
    """Announce the first segment's bitrate instead when higher (the source rendition)."""


class RenditionOutput:
    def __init__(
        self,
        info: RenditionInfo,
        muxer: SegmentMuxer,
        events: EventWriter,
        *,
        output_dir: Path,
        epoch: int,
        first_sequence: int,
        file_prefix: str = "",
    ) -> None:
        self.info = info
        self.muxer = muxer
        self.events = events
        self.epoch = epoch
        self.file_prefix = file_prefix
        self.first_sequence = first_sequence
        self.directory = output_dir / info.name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segments_written = 0
        self._video: defaultdict[int, list[MediaPacket]] = defaultdict(list)
        self._cuts: dict[int, Cut] = {}
        self._video_done: float = -1
        self._next = 0
        self._init_path: str | None = None

    def add_video(self, index: int, packet: MediaPacket) -> None:
        """A video packet (decode order) of segment ``index``; earlier segments are complete."""
        self._video[max(index, self._next)].append(packet)
        self.video_done_through(index - 1)

    def video_done_through(self, index: float) -> None:
        if index > self._video_done:
            self._video_done = index
            self._flush()

    def cut(self, cut: Cut) -> None:
        self._cuts[cut.index] = cut
        self._flush()

    def finish(self) -> None:
        """End of stream: all video is in; write every segment that has its cut."""
        self.video_done_through(math.inf)

    def _flush(self) -> None:
        while self._next in self._cuts and (
            not self.info.has_video or self._video_done >= self._next
        ):
            self._write(self._cuts.pop(self._next), self._video.pop(self._next, []))
            self._next += 1

    def _write(self, cut: Cut, video: list[MediaPacket]) -> None:
        sequence = self.first_sequence + cut.index
        tracks = ([video] if self.info.has_video else []) + (
            [cut.audio] if self.info.has_audio else []
        )
        if not any(tracks):
            self.events.emit(
                "warning", message=f"{self.info.name}: segment {sequence} has no media; skipped"
            )
            return
        media = self.muxer.mux(tracks, sequence + 1)
        if self.segments_written == 0:
            self._announce(len(media), cut)
        relpath = f"{self.info.name}/{self.file_prefix}seg-{sequence}.{self.muxer.extension}"
        write_atomic(self.directory.parent / relpath, media)
        self.segments_written += 1
        self.events.emit(
            "segment",
            rendition=self.info.name,
            sequence=sequence,
            path=relpath,
            duration=round(float(cut.duration), 6),
            start=round(float(cut.start), 6),
            size=len(media),
            independent=not video or video[0].keyframe,
        )

    def _announce(self, first_size: int, first: Cut) -> None:
        """Write the init segment and emit the ``rendition`` event (before the first segment)."""
        if self.muxer.init is not None:
            self._init_path = f"{self.info.name}/{self.file_prefix}init-{self.epoch}.mp4"
            write_atomic(self.directory.parent / self._init_path, self.muxer.init)
        measured = int(first_size * 8 / first.duration) if first.duration > 0 else 0
        info = self.info
        self.events.emit(
            "rendition",
            name=info.name,
            width=info.width,
            height=info.height,
            frame_rate=info.frame_rate,
            codecs=info.codecs,
            bandwidth=max(info.bandwidth, measured) if info.measure_bandwidth else info.bandwidth,
            init=self._init_path,
            has_video=info.has_video,
            has_audio=info.has_audio,
        )
