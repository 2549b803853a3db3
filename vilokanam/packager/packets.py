"""Encoded packets detached from any container, timed on the stream's timeline."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
from av.stream import Stream


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """An encoded packet detached from any container, timed on the stream's timeline."""

    data: bytes
    pts: int
    dts: int
    duration: int
    time_base: Fraction
    keyframe: bool

    @property
    def time(self) -> Fraction:
        """Presentation time in seconds."""
        return self.pts * self.time_base

    @property
    def end(self) -> Fraction:
        return (self.pts + self.duration) * self.time_base

    @property
    def decode_time(self) -> Fraction:
        return self.dts * self.time_base

    @classmethod
    def from_av(cls, packet: av.Packet, default_duration: int = 0) -> MediaPacket:
        """A copy of ``packet`` (``default_duration`` when the packet carries none)."""
        time_base = packet.time_base
        if time_base is None:
            raise ValueError("packet without a time base")
        pts = packet.pts if packet.pts is not None else packet.dts
        dts = packet.dts if packet.dts is not None else pts
        if pts is None or dts is None:
            raise ValueError("packet without timestamps")
        duration = packet.duration or default_duration
        return cls(bytes(packet), pts, dts, duration, time_base, packet.is_keyframe)

    def to_av(self, stream: Stream) -> av.Packet:
        packet = av.Packet(self.data)
        packet.pts, packet.dts, packet.duration = self.pts, self.dts, self.duration
        packet.time_base = self.time_base
        packet.is_keyframe = self.keyframe
        packet.stream = stream
        return packet
