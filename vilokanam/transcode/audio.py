"""The source audio as AAC packets: copied untouched when it is AAC, re-encoded once otherwise.

FLV can carry MP3, Speex, Nellymoser or PCM; HLS players want AAC. Every rendition shares the
same audio packets either way.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from av.codec.context import Flags

from vilokanam.packager.codecs import aac_codec_string
from vilokanam.packager.packets import MediaPacket

AAC_FRAME = 1024
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


class SampleClock:
    """Sample-exact times for copied AAC: FLV rounds timestamps to milliseconds, so each frame
    is placed right after the previous one unless its timestamp jumps by more than
    ``tolerance`` (a real gap or overlap, which is kept)."""

    def __init__(self, rate: int, frame: int, tolerance: Fraction = Fraction(2, 1000)) -> None:
        self.rate = rate
        self.frame = frame
        self.tolerance = tolerance * rate
        self._next: int | None = None

    def stamp(self, time: Fraction) -> int:
        """The frame's time in samples."""
        pts = round(time * self.rate)
        if self._next is not None and abs(pts - self._next) <= self.tolerance:
            pts = self._next
        self._next = pts + self.frame
        return pts


class AudioPath:
    """What every rendition's audio track is made of."""

    copy: bool
    template: AudioStream
    """Codec parameters for the segment muxers."""
    bitrate: int

    def __init__(self, stream: AudioStream) -> None:
        self.stream = stream

    @property
    def source_codec(self) -> str:
        return self.stream.codec_context.name

    @property
    def codecs(self) -> str:
        return aac_codec_string(self.template.codec_context.extradata or b"")

    def process(self, packet: av.Packet | None) -> list[MediaPacket]:
        """AAC packets for one demuxed source packet (None at end of stream flushes)."""
        raise NotImplementedError


class CopiedAac(AudioPath):
    copy = True

    def __init__(self, stream: AudioStream, bitrate: int) -> None:
        super().__init__(stream)
        context = stream.codec_context
        self.template = stream
        self.bitrate = context.bit_rate or bitrate
        self._clock = SampleClock(context.sample_rate, context.frame_size or AAC_FRAME)

    def process(self, packet: av.Packet | None) -> list[MediaPacket]:
        if packet is None or packet.pts is None or packet.time_base is None:
            return []
        clock = self._clock
        pts = clock.stamp(packet.pts * packet.time_base)
        return [MediaPacket(bytes(packet), pts, pts, clock.frame, Fraction(1, clock.rate), True)]


class ReencodedAac(AudioPath):
    """Decode, resample to the encoder's format in 1024-sample frames, encode AAC-LC.

    Output times follow the sample count from the first decoded frame; the encoder's priming
    delay is taken out so the first packet keeps the first input time.
    """

    copy = False

    def __init__(self, stream: AudioStream, bitrate: int) -> None:
        super().__init__(stream)
        source = stream.codec_context
        rate = source.sample_rate if source.sample_rate in AAC_RATES else 48000
        layout = "mono" if source.layout.nb_channels == 1 else "stereo"
        self._container = av.open(io.BytesIO(), "w", format="null")
        self.template = self._container.add_stream("aac", rate=rate)
        encoder = self.template.codec_context
        encoder.layout, encoder.bit_rate = layout, bitrate
        encoder.time_base = Fraction(1, rate)
        encoder.flags |= int(Flags.global_header)
        self._container.start_encoding()  # opens the encoder: its AudioSpecificConfig exists
        self._encoder = encoder
        self.bitrate = bitrate
        self._resampler = AudioResampler(
            format=encoder.format, layout=layout, rate=rate, frame_size=AAC_FRAME
        )
        self._next_pts: int | None = None
        self._shift: int | None = None

    def process(self, packet: av.Packet | None) -> list[MediaPacket]:
        out: list[MediaPacket] = []
        frames = self.stream.codec_context.decode(packet)
        for frame in frames:
            if self._next_pts is None and frame.pts is not None and frame.time_base:
                self._next_pts = round(frame.pts * frame.time_base * self._encoder.sample_rate)
            for resampled in self._resampler.resample(frame):
                out += self._encode(resampled)
        if packet is None:
            for resampled in self._resampler.resample(None):
                out += self._encode(resampled)
            out += self._encode(None)
        return out

    def _encode(self, frame: av.AudioFrame | None) -> list[MediaPacket]:
        first = self._next_pts or 0
        if frame is not None:
            frame.pts, frame.time_base = first, self._encoder.time_base
            self._next_pts = first + frame.samples
        packets = []
        for packet in self._encoder.encode(frame):
            if self._shift is None:
                self._shift = max(0, first - packet.pts)
            packet.pts += self._shift
            packet.dts += self._shift
            packets.append(MediaPacket.from_av(packet, AAC_FRAME))
        return packets


def open_audio(stream: AudioStream, bitrate: int) -> AudioPath:
    """Copy AAC; re-encode anything else to AAC-LC at ``bitrate``."""
    if stream.codec_context.name == "aac":
        return CopiedAac(stream, bitrate)
    return ReencodedAac(stream, bitrate)
