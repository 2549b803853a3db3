"""One transcoded rung on its own thread: scale, encode, hand packets to its rendition.

libswscale and libx264 release the GIL, so rungs run in parallel. Each thread owns its
:class:`VideoReformatter`: ``frame.reformat()`` caches the scaler on the shared decoded frame,
and several threads scaling one frame that way deadlock inside swscale.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from av.video.frame import VideoFrame
from av.video.reformatter import Interpolation, VideoReformatter

from vilokanam.packager.packets import MediaPacket
from vilokanam.transcode.encoder import VideoEncoder
from vilokanam.transcode.rendition import RenditionOutput
from vilokanam.transcode.stats import Throughput
from vilokanam.transcode.timeline import Cut

log = logging.getLogger(__name__)

SCALER = Interpolation.BICUBIC  # what ffmpeg's scale filter uses by default


@dataclass(frozen=True)
class FrameJob:
    frame: VideoFrame
    index: int
    keyframe: bool
    """Force an IDR: this frame starts segment ``index``."""


class RungFailed(RuntimeError):
    pass


class RungThread(threading.Thread):
    def __init__(self, encoder: VideoEncoder, output: RenditionOutput, queue_size: int = 8) -> None:
        super().__init__(name=f"rung-{encoder.rung.name}", daemon=True)
        self.encoder = encoder
        self.output = output
        self.error: BaseException | None = None
        self._queue: queue.Queue[FrameJob | Cut | None] = queue.Queue(queue_size)
        self._reformatter = VideoReformatter()
        self._index_of: dict[int, int] = {}
        self._last_index = 0
        self.throughput = Throughput()
        """Packets encoded and media time reached, for the worker's ``stats`` events."""

    def put(self, item: FrameJob | Cut | None) -> None:
        """Queue work (None = end of stream); blocks while the rung is behind."""
        while True:
            self.check()
            try:
                self._queue.put(item, timeout=0.25)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        if self.error is not None:
            name = self.encoder.rung.name
            raise RungFailed(f"rung {name} failed: {self.error!r}") from self.error

    def run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                if isinstance(item, Cut):
                    self.output.cut(item)
                else:
                    self._encode(item)
            self._deliver(self.encoder.encode(None))
            self.output.finish()
        except BaseException as exc:
            log.exception("rung %s failed", self.encoder.rung.name)
            self.error = exc
            while self._queue.get() is not None:
                pass  # keep the feeding thread from blocking until it notices
        finally:
            self.encoder.close()

    def _encode(self, job: FrameJob) -> None:
        rung = self.encoder.rung
        scaled = self._reformatter.reformat(
            job.frame, rung.width, rung.height, format="yuv420p", interpolation=SCALER
        )
        scaled.pts, scaled.time_base = job.frame.pts, job.frame.time_base
        self._index_of[job.frame.pts] = job.index
        self._deliver(self.encoder.encode(scaled, keyframe=job.keyframe))

    def _deliver(self, packets: list[MediaPacket]) -> None:
        for packet in packets:
            self._last_index = self._index_of.pop(packet.pts, self._last_index)
            self.output.add_video(self._last_index, packet)
            self.throughput.add(1, (packet.pts + packet.duration) * float(packet.time_base))
