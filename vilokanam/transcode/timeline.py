"""When each segment is complete: boundaries from video keyframes, audio sorted into segments.

Fed the demuxed source in order, it answers which segment a video packet or frame belongs to
and yields a :class:`Cut` per finished segment: its time range and its audio packets. A cut
waits until audio up to its end has arrived, unless video is ``grace`` seconds further (audio
late or gone). Audio-only streams cut on audio packets. No media I/O here: testable alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from vilokanam.packager.packets import MediaPacket
from vilokanam.transcode.boundaries import BoundaryPlanner


@dataclass
class Cut:
    """Segment ``index`` spans ``[start, end)`` seconds; its audio is complete."""

    index: int
    start: Fraction
    end: Fraction
    audio: list[MediaPacket] = field(default_factory=list)

    @property
    def duration(self) -> Fraction:
        return self.end - self.start


class Timeline:
    def __init__(
        self,
        segment_duration: Fraction,
        *,
        has_video: bool,
        has_audio: bool,
        grace: Fraction = Fraction(1),
    ) -> None:
        if not (has_video or has_audio):
            raise ValueError("a stream needs audio or video")
        self.planner = BoundaryPlanner(segment_duration)
        self.has_video = has_video
        self.has_audio = has_audio
        self.grace = grace
        self.closed = 0
        """Number of cuts made: index of the first open segment."""
        self.audio_clock: Fraction | None = None
        self.video_clock: Fraction | None = None
        self.media_end: Fraction | None = None
        self._unplaced: list[MediaPacket] = []
        self._audio: dict[int, list[MediaPacket]] = {}

    @property
    def boundaries(self) -> list[Fraction]:
        return self.planner.boundaries

    @property
    def started(self) -> bool:
        return bool(self.planner.boundaries)

    def video_packet(self, packet: MediaPacket) -> int | None:
        """Segment index of a source video packet (decode order); None before the first keyframe."""
        if packet.keyframe:
            self.planner.offer(packet.time)
            self._place_audio()
        if not self.started:
            return None
        self.video_clock = _later(self.video_clock, packet.time)
        self.media_end = _later(self.media_end, packet.end)
        return max(self.planner.index_of(packet.time), self.closed)

    def frame(self, time: Fraction) -> tuple[int, bool]:
        """(segment index, starts a segment) of a decoded frame presented at ``time``.

        Not clamped to the open segments: decoding lags demuxing, and a rung holds each cut
        until its encoder has passed the cut's end.
        """
        return self.planner.index_of(time), self.planner.is_boundary(time)

    def audio_packet(self, packet: MediaPacket) -> int | None:
        """Add an audio packet. Audio-only: its segment index (None never happens then)."""
        self.audio_clock = _later(self.audio_clock, packet.time)
        self.media_end = _later(self.media_end, packet.end)
        if not self.has_video:
            self.planner.offer(packet.time)
            index = max(self.planner.index_of(packet.time), self.closed)
            self._audio.setdefault(index, []).append(packet)
            return index
        self._unplaced.append(packet)
        self._place_audio()
        return None

    def ready(self) -> list[Cut]:
        """Cuts that became complete, in order."""
        cuts = []
        while len(self.boundaries) > self.closed + 1:
            end = self.boundaries[self.closed + 1]
            if not self._audio_reached(end):
                break
            cuts.append(self._cut(end))
        return cuts

    def finish(self) -> list[Cut]:
        """End of stream: every open segment, the last one ending where the media ends."""
        if not self.started:
            return []
        self._place_audio(final=True)
        cuts = []
        while self.closed < len(self.boundaries):
            if self.closed + 1 < len(self.boundaries):
                end = self.boundaries[self.closed + 1]
            else:
                end = max(self.media_end or self.boundaries[-1], self.boundaries[-1])
            cuts.append(self._cut(end))
        return cuts

    def _cut(self, end: Fraction) -> Cut:
        index = self.closed
        self.closed += 1
        return Cut(index, self.boundaries[index], end, self._audio.pop(index, []))

    def _audio_reached(self, end: Fraction) -> bool:
        if not self.has_audio or not self.has_video:
            return True
        if self.audio_clock is not None and self.audio_clock >= end:
            return True
        return self.video_clock is not None and self.video_clock >= end + self.grace

    def _place_audio(self, final: bool = False) -> None:
        """Give waiting audio packets a segment once the boundary after them is known."""
        if not self.has_video or not self.started:
            return
        target = self.planner.next_target
        waiting = []
        for packet in self._unplaced:
            if final or target is None or packet.time < target:
                index = max(self.planner.index_of(packet.time), self.closed)
                self._audio.setdefault(index, []).append(packet)
            else:
                waiting.append(packet)
        self._unplaced = waiting


def _later(current: Fraction | None, time: Fraction) -> Fraction:
    return time if current is None else max(current, time)
