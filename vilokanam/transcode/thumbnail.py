"""Poster thumbnails: a JPEG from a source keyframe, at once and then every ``interval`` seconds
of media time, written to ``{output_dir}/thumbnail.jpg`` and announced with a ``thumbnail`` event.

The demux loop must never wait for this: it hands over a copy of a keyframe's bytes, and a
short-lived thread decodes it with its own decoder (the main decoder may not run at all when the
source is only passed through), scales it with its own scaler (a shared frame's cached scaler
deadlocks across threads), encodes it with PyAV's ``mjpeg`` encoder and renames the file into
place. libavcodec and libswscale release the GIL, so the encode threads barely notice: a 720p
keyframe costs about 25 ms of one core, every 30 s. While one is being made, keyframes are not
taken; a keyframe that does not decode leaves the next one due.
"""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import VideoFrame
from av.video.reformatter import Interpolation, VideoReformatter

from vilokanam.packager.segmenter import write_atomic
from vilokanam.transcode.events import EventWriter

log = logging.getLogger(__name__)

THUMBNAIL = "thumbnail.jpg"
JPEG_QSCALE = 4
"""mjpeg quantizer scale: 2 (best) … 31 (worst); 4 looks clean at a few tens of kB."""
FF_QP2LAMBDA = 118
"""libavcodec's factor from a quantizer to ``global_quality`` (what ``ffmpeg -q:v`` sets)."""


class ThumbnailError(RuntimeError):
    """The keyframe gave no picture."""


def thumbnail_size(
    width: int, height: int, target_width: int, sample_aspect: Fraction = Fraction(1)
) -> tuple[int, int]:
    """Output size for a ``width``x``height`` picture: ``target_width`` wide (never wider than
    the picture is displayed: no upscaling), the display aspect kept, both even (4:2:0)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"no picture size: {width}x{height}")
    display_width = width * (sample_aspect if sample_aspect > 0 else Fraction(1))
    out_width = max(2, min(target_width, round(display_width)) // 2 * 2)
    out_height = max(2, round(out_width * height / display_width / 2) * 2)
    return out_width, out_height


def encode_jpeg(
    frame: VideoFrame, width: int, height: int, reformatter: VideoReformatter | None = None
) -> bytes:
    """``frame`` scaled to ``width``x``height`` as one baseline JPEG (full-range 4:2:0)."""
    scaled = (reformatter or VideoReformatter()).reformat(
        frame, width, height, format="yuvj420p", interpolation=Interpolation.BICUBIC
    )
    scaled.pts = 0
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 1)
    encoder.qscale = True
    encoder.global_quality = JPEG_QSCALE * FF_QP2LAMBDA
    packets = encoder.encode(scaled) + encoder.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def decode_keyframe(
    codec: str, extradata: bytes | None, data: bytes, options: dict[str, str] | None = None
) -> VideoFrame:
    """Decode one keyframe on a fresh decoder (it needs nothing before it)."""
    decoder = av.CodecContext.create(codec, "r")
    if extradata:
        decoder.extradata = extradata
    decoder.thread_count = 1  # one picture: threads would only add latency
    if options:
        decoder.options = options
    frames = decoder.decode(av.Packet(data)) + decoder.decode(None)
    pictures = [frame for frame in frames if isinstance(frame, VideoFrame)]
    if not pictures:
        raise ThumbnailError("the keyframe decoded to no picture")
    return pictures[0]


class ThumbnailMaker:
    """Takes source keyframes as they are demuxed; makes a poster when one is due."""

    def __init__(
        self,
        *,
        codec: str,
        extradata: bytes | None,
        width: int,
        height: int,
        sample_aspect: Fraction,
        output_dir: Path,
        events: EventWriter,
        interval: float,
        target_width: int,
    ) -> None:
        self.codec = codec
        self.extradata = extradata
        self.size = thumbnail_size(width, height, target_width, sample_aspect)
        self.path = output_dir / THUMBNAIL
        self.events = events
        self.interval = Fraction(interval).limit_denominator(1000)
        self.made = 0
        self.failed = 0
        self.seconds = 0.0
        """Wall time spent making thumbnails (decode, scale, encode, write)."""
        self._next_due: Fraction | None = None
        """Media time from which a keyframe is taken (None: the first keyframe)."""
        self._thread: threading.Thread | None = None
        self._reformatter = VideoReformatter()

    def due(self, at: Fraction) -> bool:
        return self._next_due is None or at >= self._next_due

    def offer(self, packet: av.Packet, at: Fraction) -> bool:
        """A source keyframe presented at ``at`` s; True if it becomes the next poster.
        Returns at once: the work happens on a thread."""
        if not self.due(at) or (self._thread is not None and self._thread.is_alive()):
            return False
        data = bytes(packet)  # the demuxer reuses nothing we keep: the thread owns this copy
        self._thread = threading.Thread(
            target=self._make, args=(data, at), name="thumbnail", daemon=True
        )
        self._thread.start()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Wait for a poster still being made (the end of the stream)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _make(self, data: bytes, at: Fraction) -> None:
        started = time.perf_counter()
        try:
            frame = decode_keyframe(self.codec, self.extradata, data)
            jpeg = encode_jpeg(frame, *self.size, reformatter=self._reformatter)
            write_atomic(self.path, jpeg)
        except (av.FFmpegError, ThumbnailError, OSError, ValueError) as exc:
            self.failed += 1
            if self.failed == 1:
                self.events.emit("warning", message=f"thumbnail not made: {exc}")
            log.debug("thumbnail at %.3f s failed: %s", float(at), exc)
            return  # the next keyframe is still due
        self._next_due = at + self.interval
        self.made += 1
        self.seconds += time.perf_counter() - started
        self.events.emit("thumbnail", path=THUMBNAIL, time=round(float(at), 3), size=len(jpeg))
