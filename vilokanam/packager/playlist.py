"""Live media playlists with a sliding window, and the master playlist (RFC 8216, via ``m3u8``).

Pure: these classes hold playlist state and render text; writing files is the caller's job.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import m3u8
from m3u8.model import Playlist, Segment

HLS_VERSION = 7


@dataclass(frozen=True)
class SegmentEntry:
    sequence: int
    uri: str
    duration: float
    program_date_time: datetime
    init_uri: str | None = None
    discontinuity: bool = False
    """True on the first segment after a reconnect or a worker restart."""


@dataclass
class MediaPlaylist:
    """One rendition's live playlist: the last ``window`` segments, then ENDLIST when done."""

    target_duration: float
    window: int
    segments: deque[SegmentEntry] = field(default_factory=deque)
    discontinuity_sequence: int = 0
    ended: bool = False
    vod: bool = False
    """A finished recording: ``#EXT-X-PLAYLIST-TYPE:VOD`` (players may seek anywhere)."""
    _max_duration: float = 0.0

    def add(self, entry: SegmentEntry) -> list[SegmentEntry]:
        """Append a segment; returns the segments that left the window."""
        if self.segments and entry.sequence <= self.segments[-1].sequence:
            raise ValueError(f"segment {entry.sequence} is not after {self.segments[-1].sequence}")
        self.segments.append(entry)
        self._max_duration = max(self._max_duration, entry.duration)
        removed = []
        while len(self.segments) > self.window:
            old = self.segments.popleft()
            # A discontinuity tag leaving the window bumps the sequence (RFC 8216 4.3.3.3).
            if old.discontinuity:
                self.discontinuity_sequence += 1
            removed.append(old)
        return removed

    @property
    def media_sequence(self) -> int:
        return self.segments[0].sequence if self.segments else 0

    @property
    def declared_target_duration(self) -> int:
        """EXT-X-TARGETDURATION: no EXTINF may round above it (RFC 8216 4.3.3.1)."""
        return max(1, math.ceil(self.target_duration), round(self._max_duration))

    def render(self) -> str:
        playlist = m3u8.M3U8()
        playlist.version = HLS_VERSION
        playlist.target_duration = self.declared_target_duration
        playlist.media_sequence = self.media_sequence
        if self.vod:
            playlist.playlist_type = "vod"
        if self.discontinuity_sequence:
            playlist.discontinuity_sequence = self.discontinuity_sequence
        for entry in self.segments:
            playlist.add_segment(
                Segment(
                    uri=entry.uri,
                    duration=round(entry.duration, 3),
                    base_uri=None,
                    discontinuity=entry.discontinuity,
                    program_date_time=entry.program_date_time,
                    init_section={"uri": entry.init_uri} if entry.init_uri else None,
                )
            )
        playlist.is_endlist = self.ended
        text = playlist.dumps()
        if "#EXT-X-MEDIA-SEQUENCE:" not in text:
            # m3u8 leaves out a sequence of 0, and native players (Chromium, Safari) take a
            # playlist without it for VOD: they stop at its end instead of reloading it.
            tag = f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}\n"
            text = text.replace("#EXTM3U\n", "#EXTM3U\n" + tag, 1)
        return text


@dataclass(frozen=True)
class Variant:
    """One rendition as the master playlist announces it."""

    name: str
    uri: str
    bandwidth: int
    average_bandwidth: int
    codecs: str
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None


def render_master(variants: list[Variant]) -> str:
    """The master playlist, highest bandwidth first."""
    master = m3u8.M3U8()
    master.version = HLS_VERSION
    master.is_independent_segments = True
    for variant in sorted(variants, key=lambda v: v.bandwidth, reverse=True):
        info: dict[str, object] = {
            "bandwidth": variant.bandwidth,
            "average_bandwidth": variant.average_bandwidth,
            "codecs": variant.codecs,
        }
        if variant.width and variant.height:
            info["resolution"] = f"{variant.width}x{variant.height}"
        if variant.frame_rate:
            info["frame_rate"] = f"{variant.frame_rate:.3f}"
        master.add_playlist(Playlist(uri=variant.uri, stream_info=info, media=[], base_uri=None))
    return master.dumps()
