"""The transcode worker process: FLV on stdin → HLS segment files, JSON-line events on stdout.

``python -m vilokanam.transcode.worker SPEC_JSON``. The main thread demuxes, decodes the video
once and cuts the timeline; one thread per transcoded rung scales and encodes. Logs go to
stderr; a bad input ends the process with a message there and exit status 1.
"""

from __future__ import annotations

import logging
import os
import sys
from fractions import Fraction

import av
from av.video.frame import VideoFrame

from vilokanam.packager.packets import MediaPacket
from vilokanam.transcode.audio import open_audio
from vilokanam.transcode.events import EventWriter
from vilokanam.transcode.outputs import LadderBuilder
from vilokanam.transcode.rung import FrameJob, RungFailed
from vilokanam.transcode.source import PipeReader, Source, SourceError, open_source
from vilokanam.transcode.spec import SpecError, WorkerSpec
from vilokanam.transcode.stats import Stats
from vilokanam.transcode.thumbnail import ThumbnailMaker
from vilokanam.transcode.timeline import Cut, Timeline

log = logging.getLogger("vilokanam.transcode.worker")

MAX_DECODE_ERRORS = 25
"""Consecutive undecodable packets before the input counts as corrupt."""
JOIN_TIMEOUT = 120.0


class Worker:
    def __init__(self, spec: WorkerSpec, source: Source, events: EventWriter) -> None:
        self.spec = spec
        self.source = source
        self.events = events
        self.duration = spec.segment_fraction
        self.timeline = Timeline(
            self.duration, has_video=source.video is not None, has_audio=source.audio is not None
        )
        self.audio = open_audio(source.audio, spec.audio_bitrate) if source.audio else None
        ladder = LadderBuilder(spec, source, self.audio, events).build()
        self.names = ladder.names
        self.warnings = ladder.warnings
        self.source_output = ladder.source
        self.rungs = ladder.rungs
        self.stats = Stats()
        if self.source_output is not None:  # passthrough: its packet rate is the source's
            self.stats.track(self.source_output.info.name, self.stats.total)
        for rung in self.rungs:
            self.stats.track(rung.encoder.rung.name, rung.throughput)
        self._frame_duration = 0
        if source.video is not None:
            self._frame_duration = max(1, round(1 / (source.frame_rate * source.video.time_base)))
            if self.rungs:
                source.video.codec_context.thread_type = "AUTO"  # decode on every core
        self.thumbnails = self._thumbnail_maker()
        self._last_frame_pts: int | None = None
        self._errors: dict[str, int] = {}
        """Consecutive failures by kind."""

    def _thumbnail_maker(self) -> ThumbnailMaker | None:
        video = self.source.video
        if video is None or self.spec.thumbnail_interval <= 0:
            return None
        return ThumbnailMaker(
            codec=video.codec_context.name,
            extradata=video.codec_context.extradata,
            width=self.source.width,
            height=self.source.height,
            sample_aspect=self.source.sample_aspect,
            output_dir=self.spec.output_dir,
            events=self.events,
            interval=self.spec.thumbnail_interval,
            target_width=self.spec.thumbnail_width,
        )

    def run(self) -> None:
        self.events.emit("ladder", renditions=self.names)
        for message in self.warnings:
            self.events.emit("warning", message=message)
        for rung in self.rungs:
            rung.start()
        for packet in self.source.packets():
            if packet.stream is self.source.video:
                self._video_packet(packet)
            else:
                self._audio_packet(packet)
            self._dispatch(self.timeline.ready())
            for rung in self.rungs:
                rung.check()
            self._report()
        self._finish()

    def _video_packet(self, packet: av.Packet) -> None:
        record = MediaPacket.from_av(packet, self._frame_duration)
        index = self.timeline.video_packet(record)
        if index is None:
            return  # before the first keyframe: nothing can decode it
        self.stats.frames += 1
        self.stats.progress(self.timeline.video_clock)
        if record.keyframe:
            self._check_gop()
            if self.thumbnails is not None:
                self.thumbnails.offer(packet, record.time)
        if self.source_output is not None:
            self.source_output.add_video(index, record)
        if self.rungs:
            self._decode(packet)

    def _decode(self, packet: av.Packet | None) -> None:
        assert self.source.video is not None
        try:
            frames = self.source.video.codec_context.decode(packet)
        except av.FFmpegError as exc:
            self._error("video decode", exc)
            return
        self._errors["video decode"] = 0
        for frame in frames:
            self._send(frame)

    def _send(self, frame: VideoFrame) -> None:
        if frame.pts is None:
            return
        if frame.time_base is None:  # frames drained at end of stream come without one
            frame.time_base = self.source.video.time_base  # type: ignore[union-attr]
        if self._last_frame_pts is not None and frame.pts <= self._last_frame_pts:
            self.events.warn_once("pts", "video frames with non-increasing timestamps dropped")
            return
        self._last_frame_pts = frame.pts
        index, keyframe = self.timeline.frame(frame.pts * frame.time_base)
        job = FrameJob(frame, index, keyframe)
        for rung in self.rungs:
            rung.put(job)

    def _audio_packet(self, packet: av.Packet | None) -> None:
        assert self.audio is not None
        try:
            records = self.audio.process(packet)
        except av.FFmpegError as exc:
            self._error("audio decode", exc)
            return
        self._errors["audio decode"] = 0
        for record in records:
            self.timeline.audio_packet(record)
        if self.source.video is None and records:
            self.stats.progress(self.timeline.audio_clock)

    def _error(self, what: str, exc: Exception) -> None:
        count = self._errors[what] = self._errors.get(what, 0) + 1
        if count > MAX_DECODE_ERRORS:
            raise SourceError(f"corrupt input: {what} failed {count} times running: {exc}") from exc
        self.events.warn_once(what, f"{what} error, packet skipped: {exc}")

    def _check_gop(self) -> None:
        gop = self.timeline.planner.longest_gop
        slack = Fraction(self._frame_duration) * self.source.video.time_base / 2  # type: ignore[union-attr]
        if gop > self.duration + slack:
            self.events.warn_once(
                "gop",
                f"source keyframe interval {float(gop):.2f} s is longer than the segment "
                f"duration {float(self.duration):g} s: segments get longer "
                f"(set the encoder's keyframe interval to {float(self.duration):g} s)",
            )

    def _dispatch(self, cuts: list[Cut]) -> None:
        for cut in cuts:
            if self.source_output is not None:
                self.source_output.cut(cut)
            for rung in self.rungs:
                rung.put(cut)

    def _finish(self) -> None:
        if self.rungs:
            self._decode(None)
        if self.audio is not None:
            self._audio_packet(None)
        if not self.timeline.started:
            raise SourceError("the input ended before any decodable audio or video")
        self._dispatch(self.timeline.finish())
        if self.source_output is not None:
            self.source_output.finish()
        for rung in self.rungs:
            rung.put(None)
        for rung in self.rungs:
            rung.join(JOIN_TIMEOUT)
            rung.check()
            if rung.is_alive():
                raise RungFailed(f"rung {rung.encoder.rung.name} did not finish")
        if self.thumbnails is not None:
            self.thumbnails.close()
        self._report(force=True)

    def _report(self, force: bool = False) -> None:
        """A ``stats`` event every few seconds: totals and ``rungs`` (per rendition)."""
        figures = self.stats.due(force)
        if figures is not None:
            self.events.emit("stats", **figures)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if len(argv) != 2:
        log.error("usage: python -m vilokanam.transcode.worker SPEC_JSON")
        return 2
    try:
        spec = WorkerSpec.from_json(argv[1])
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        events = EventWriter()
        source = open_source(PipeReader(sys.stdin.fileno()))
        Worker(spec, source, events).run()
        events.emit("end")
    except (SpecError, SourceError, RungFailed, av.FFmpegError, OSError) as exc:
        log.error("transcode failed: %s", exc)
        return 1
    except Exception as exc:
        log.exception("transcode failed: unexpected %s", type(exc).__name__)
        return 1
    return 0


if __name__ == "__main__":
    status = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: a failed run may leave rung threads inside libav, which must not block exit.
    os._exit(status)
