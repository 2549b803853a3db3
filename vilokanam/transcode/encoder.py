"""libx264 for one rung: IDRs exactly where told, packets on the source timeline."""

from __future__ import annotations

import io
from fractions import Fraction

import av
from av.codec.context import Flags
from av.video.frame import PictureType, VideoFrame

from vilokanam.packager.codecs import avc_codec_string
from vilokanam.packager.packets import MediaPacket
from vilokanam.transcode.ladder import PlannedRung


class VideoEncoder:
    """Opened at construction (so its ``avcC``/SPS and CODECS string are known up front).

    The codec context lives on a stream of a ``null`` output container: that stream is the
    template the segment muxers copy codec parameters from; nothing is ever muxed into it.
    """

    def __init__(
        self,
        rung: PlannedRung,
        *,
        frame_rate: Fraction,
        time_base: Fraction,
        preset: str,
        tune: str,
        gop: int,
        threads: int = 0,
    ) -> None:
        self.rung = rung
        self._container = av.open(io.BytesIO(), "w", format="null")
        stream = self._container.add_stream("libx264", rate=frame_rate)
        context = stream.codec_context
        context.width, context.height, context.pix_fmt = rung.width, rung.height, "yuv420p"
        context.time_base = time_base
        context.bit_rate = rung.video_bitrate
        context.flags |= int(Flags.global_header)
        context.thread_count = threads
        options = {
            "preset": preset,
            "maxrate": str(rung.maxrate),
            "bufsize": str(rung.bufsize),
            "g": str(gop),
            "sc_threshold": "0",  # IDRs only where forced (and every ``gop`` frames)
            "forced-idr": "1",
            "bf": "0",  # no B-frames: a first decode time before 0 has no place in fMP4
        }
        if tune:
            options["tune"] = tune
        context.options = options
        self._container.start_encoding()
        self.template = stream
        self.context = context
        self.time_base = time_base
        self.frame_duration = max(1, round(1 / (frame_rate * time_base)))
        self.codecs = avc_codec_string(context.extradata or b"")

    def encode(self, frame: VideoFrame | None, keyframe: bool = False) -> list[MediaPacket]:
        """Encode ``frame`` (an IDR when ``keyframe``); None flushes the encoder."""
        if frame is not None:
            frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        return [
            MediaPacket.from_av(packet, self.frame_duration)
            for packet in self.context.encode(frame)
        ]

    def close(self) -> None:
        self._container.close()
