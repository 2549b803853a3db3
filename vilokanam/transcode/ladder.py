"""Ladder planning: which rungs a source gets, and their frame sizes. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

SOURCE = "source"


@dataclass(frozen=True)
class Rung:
    """A configured rung: a name, a target height and a video bitrate (bits/s)."""

    name: str
    height: int
    video_bitrate: int


@dataclass(frozen=True)
class PlannedRung:
    """A rung this source gets: the frame size to scale to and the encoder bitrate."""

    name: str
    width: int
    height: int
    video_bitrate: int

    @property
    def maxrate(self) -> int:
        return self.video_bitrate * 11 // 10

    @property
    def bufsize(self) -> int:
        return self.video_bitrate * 2


def even(value: Fraction | float) -> int:
    """The nearest even integer ≥ 2 (4:2:0 chroma needs even sizes)."""
    return max(2, 2 * round(Fraction(value) / 2))


def scaled_width(
    source_width: int, source_height: int, height: int, sample_aspect: Fraction = Fraction(1)
) -> int:
    """Width at ``height`` keeping the source's display aspect ratio (square pixels out)."""
    return even(Fraction(source_width) * sample_aspect * height / source_height)


def plan_ladder(
    source_width: int,
    source_height: int,
    rungs: Iterable[Rung],
    sample_aspect: Fraction | None = None,
) -> list[PlannedRung]:
    """The rungs strictly below the source height (never upscale; the source rung covers its
    own height), in configured order, each with an even width keeping the aspect ratio."""
    if source_width <= 0 or source_height <= 0:
        raise ValueError(f"bad source size {source_width}x{source_height}")
    aspect = sample_aspect if sample_aspect and sample_aspect > 0 else Fraction(1)
    planned = []
    for rung in rungs:
        height = rung.height - rung.height % 2
        if height < 2 or height >= source_height:
            continue
        width = scaled_width(source_width, source_height, height, aspect)
        planned.append(PlannedRung(rung.name, width, height, rung.video_bitrate))
    return planned


def rendition_names(planned: Iterable[PlannedRung], *, source: bool) -> list[str]:
    """The ladder as announced: ``source`` first (when kept), then the planned rungs."""
    return ([SOURCE] if source else []) + [rung.name for rung in planned]
