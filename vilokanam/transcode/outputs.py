"""The renditions one source gets: the passthrough ``source`` and the transcoded rungs, each
with its encoder, segment muxer and output, ready to run (nothing is emitted here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from av.stream import Stream

from vilokanam.packager.codecs import avc_codec_string, join_codecs
from vilokanam.packager.segmenter import SegmentMuxer
from vilokanam.transcode.audio import AudioPath
from vilokanam.transcode.encoder import VideoEncoder
from vilokanam.transcode.events import EventWriter
from vilokanam.transcode.ladder import SOURCE, PlannedRung, plan_ladder, rendition_names
from vilokanam.transcode.rendition import RenditionInfo, RenditionOutput
from vilokanam.transcode.rung import RungThread
from vilokanam.transcode.source import Source, SourceError
from vilokanam.transcode.spec import WorkerSpec

GOP_SEGMENTS = 10
"""x264's own keyframe interval, in segments: IDRs come where forced, not from x264."""


@dataclass
class Ladder:
    names: list[str]
    source: RenditionOutput | None
    rungs: list[RungThread]
    warnings: list[str] = field(default_factory=list)


class LadderBuilder:
    def __init__(
        self, spec: WorkerSpec, source: Source, audio: AudioPath | None, events: EventWriter
    ) -> None:
        self.spec = spec
        self.source = source
        self.audio = audio
        self.events = events

    def build(self) -> Ladder:
        video = self.source.video
        planned: list[PlannedRung] = []
        if video is not None:
            planned = plan_ladder(
                self.source.width, self.source.height, self.spec.ladder, self.source.sample_aspect
            )
        warnings = []
        keep_source = self.spec.source_rendition or not planned
        if video is not None and video.codec_context.name != "h264" and keep_source:
            if not planned:
                raise SourceError(f"{video.codec_context.name} video cannot be passed through")
            warnings.append(f"{video.codec_context.name} video: no source passthrough rendition")
            keep_source = False
        if keep_source and not self.spec.source_rendition:
            warnings.append("no transcoded rung fits this source: serving the source rendition")
        if self.audio is not None and not self.audio.copy:
            warnings.append(f"{self.audio.source_codec} audio is re-encoded to AAC")
        return Ladder(
            rendition_names(planned, source=keep_source),
            self._source_output() if keep_source else None,
            [self._rung(rung) for rung in planned],
            warnings,
        )

    def _output(self, info: RenditionInfo, video: list[Stream]) -> RenditionOutput:
        audio = [self.audio.template] if self.audio else []
        return RenditionOutput(
            info,
            SegmentMuxer(self.spec.format, video + audio),
            self.events,
            output_dir=self.spec.output_dir,
            epoch=self.spec.epoch,
            first_sequence=self.spec.first_sequence,
            file_prefix=self.spec.file_prefix,
        )

    def _source_output(self) -> RenditionOutput:
        video = self.source.video
        video_codecs = avc_codec_string(video.codec_context.extradata or b"") if video else None
        info = RenditionInfo(
            SOURCE,
            join_codecs(video_codecs, self._audio_codecs),
            has_video=video is not None,
            has_audio=self.audio is not None,
            width=self.source.width or None,
            height=self.source.height or None,
            frame_rate=self._frame_rate,
            bandwidth=self.source.video_bitrate + self._audio_bitrate,
            measure_bandwidth=True,
        )
        return self._output(info, [video] if video else [])

    def _rung(self, rung: PlannedRung) -> RungThread:
        assert self.source.video is not None
        rate = self.source.frame_rate
        encoder = VideoEncoder(
            rung,
            frame_rate=rate,
            time_base=self.source.video.time_base,
            preset=self.spec.x264_preset,
            tune=self.spec.x264_tune,
            gop=max(1, round(rate * self.spec.segment_fraction * GOP_SEGMENTS)),
        )
        info = RenditionInfo(
            rung.name,
            join_codecs(encoder.codecs, self._audio_codecs),
            has_video=True,
            has_audio=self.audio is not None,
            width=rung.width,
            height=rung.height,
            frame_rate=self._frame_rate,
            bandwidth=rung.maxrate + self._audio_bitrate,
        )
        return RungThread(encoder, self._output(info, [encoder.template]))

    @property
    def _audio_codecs(self) -> str | None:
        return self.audio.codecs if self.audio else None

    @property
    def _audio_bitrate(self) -> int:
        return self.audio.bitrate if self.audio else 0

    @property
    def _frame_rate(self) -> float | None:
        rate: Fraction = self.source.frame_rate
        return round(float(rate), 3) if self.source.video else None
