"""The worker's job description: the JSON object passed as ``argv[1]``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from vilokanam.transcode.ladder import Rung

SegmentFormat = Literal["fmp4", "mpegts"]


class SpecError(ValueError):
    """The worker spec is not valid JSON or misses / mistypes a field."""


@dataclass(frozen=True)
class WorkerSpec:
    output_dir: Path
    epoch: int = 0
    first_sequence: int = 0
    segment_duration: float = 2.0
    format: SegmentFormat = "fmp4"
    source_rendition: bool = True
    ladder: tuple[Rung, ...] = field(default_factory=tuple)
    x264_preset: str = "veryfast"
    x264_tune: str = "zerolatency"
    audio_bitrate: int = 128_000
    file_prefix: str = ""
    """Put before every file name: makes segment URLs unique per stream session, so a
    cache that keeps an "immutable" segment never serves it for another session's."""
    thumbnail_interval: float = 30.0
    """Seconds of media between poster thumbnails (0: none)."""
    thumbnail_width: int = 640

    @property
    def segment_fraction(self) -> Fraction:
        return Fraction(self.segment_duration).limit_denominator(1000)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"worker spec is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise SpecError("worker spec must be a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WorkerSpec:
        try:
            spec = cls(
                output_dir=Path(raw["output_dir"]),
                epoch=int(raw.get("epoch", 0)),
                first_sequence=int(raw.get("first_sequence", 0)),
                segment_duration=float(raw.get("segment_duration", 2.0)),
                format=raw.get("format", "fmp4"),
                source_rendition=bool(raw.get("source_rendition", True)),
                ladder=tuple(
                    Rung(str(r["name"]), int(r["height"]), int(r["video_bitrate"]))
                    for r in raw.get("ladder", [])
                ),
                x264_preset=str(raw.get("x264_preset") or "veryfast"),
                x264_tune=str(raw.get("x264_tune") or ""),
                audio_bitrate=int(raw.get("audio_bitrate", 128_000)),
                file_prefix=str(raw.get("file_prefix", "")),
                thumbnail_interval=float(raw.get("thumbnail_interval", 30.0)),
                thumbnail_width=int(raw.get("thumbnail_width", 640)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"bad worker spec: {exc!r}") from exc
        if spec.format not in ("fmp4", "mpegts"):
            raise SpecError(f"format must be 'fmp4' or 'mpegts', not {spec.format!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{0,32}", spec.file_prefix):
            raise SpecError("file_prefix may hold only letters, digits, '_' and '-'")
        if spec.segment_duration <= 0:
            raise SpecError("segment_duration must be positive")
        if not spec.thumbnail_interval >= 0 or not 16 <= spec.thumbnail_width <= 7680:
            raise SpecError("thumbnail_interval must be >= 0 and thumbnail_width 16-7680")
        return spec
