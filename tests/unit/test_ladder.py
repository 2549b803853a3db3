"""Ladder planning: no upscaling, even sizes, aspect ratio kept."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from vilokanam.transcode.ladder import (
    PlannedRung,
    Rung,
    even,
    plan_ladder,
    rendition_names,
    scaled_width,
)
from vilokanam.transcode.spec import WorkerSpec

DEFAULT = [Rung("720p", 720, 3_000_000), Rung("480p", 480, 1_400_000), Rung("360p", 360, 800_000)]


def test_1080p_source_gets_every_rung() -> None:
    planned = plan_ladder(1920, 1080, DEFAULT)
    assert [(r.name, r.width, r.height) for r in planned] == [
        ("720p", 1280, 720),
        ("480p", 854, 480),
        ("360p", 640, 360),
    ]
    assert planned[0].maxrate == 3_300_000 and planned[0].bufsize == 6_000_000


def test_no_rung_at_or_above_the_source_height() -> None:
    assert [r.name for r in plan_ladder(1280, 720, DEFAULT)] == ["480p", "360p"]
    assert [r.name for r in plan_ladder(640, 360, DEFAULT)] == []
    assert [r.name for r in plan_ladder(640, 361, DEFAULT)] == ["360p"]


def test_widths_are_even_and_keep_the_aspect_ratio() -> None:
    ladder = [Rung("240p", 240, 1), Rung("180p", 180, 1)]
    assert [(r.width, r.height) for r in plan_ladder(640, 360, ladder)] == [(426, 240), (320, 180)]
    # 4:3 and portrait sources
    assert plan_ladder(1440, 1080, DEFAULT)[0] == PlannedRung("720p", 960, 720, 3_000_000)
    assert [(r.width, r.height) for r in plan_ladder(720, 1280, DEFAULT)] == [
        (404, 720),  # 405 → an even neighbour
        (270, 480),
        (202, 360),
    ]


def test_odd_source_sizes_and_odd_rung_heights() -> None:
    planned = plan_ladder(1917, 1079, [Rung("odd", 481, 1)])
    assert planned == [PlannedRung("odd", 852, 480, 1)]  # 852.8: the nearest even width
    assert plan_ladder(100, 1000, [Rung("tiny", 10, 1)]) == [PlannedRung("tiny", 2, 10, 1)]


def test_anamorphic_source_scales_to_square_pixels() -> None:
    # DVD PAL 16:9: 720x576 with 64:45 pixels displays as 1024x576
    planned = plan_ladder(720, 576, [Rung("360p", 360, 1)], Fraction(64, 45))
    assert (planned[0].width, planned[0].height) == (640, 360)
    assert plan_ladder(720, 576, [Rung("360p", 360, 1)], Fraction(0))[0].width == 450


def test_rendition_names() -> None:
    planned = plan_ladder(1920, 1080, DEFAULT)
    assert rendition_names(planned, source=True) == ["source", "720p", "480p", "360p"]
    assert rendition_names([], source=True) == ["source"]
    assert rendition_names(planned, source=False) == ["720p", "480p", "360p"]


@given(
    st.integers(16, 4096),
    st.integers(16, 4096),
    st.lists(st.integers(2, 4320), max_size=6),
)
def test_planned_rungs_are_valid(width: int, height: int, heights: list[int]) -> None:
    rungs = [Rung(f"r{i}", h, 1000) for i, h in enumerate(heights)]
    for rung in plan_ladder(width, height, rungs):
        assert rung.height < height, "never upscale, never duplicate the source"
        assert rung.width % 2 == 0 and rung.height % 2 == 0 and rung.width >= 2
        exact = width * rung.height / height
        assert rung.width == 2 or abs(rung.width - exact) <= 1.0 + 1e-9, "closest even width"


@given(st.fractions(min_value=0, max_value=10_000))
def test_even(value: Fraction) -> None:
    result = even(value)
    assert result % 2 == 0 and result >= 2
    assert result == 2 or abs(result - value) <= 1


def test_scaled_width_rounds_to_even() -> None:
    assert scaled_width(1280, 720, 480) == 854  # 853.33
    assert scaled_width(640, 360, 240) == 426  # 426.67


def test_spec_parsing() -> None:
    spec = WorkerSpec.from_json(
        '{"output_dir": "/x", "ladder": [{"name": "a", "height": 240, "video_bitrate": 5}],'
        ' "x264_tune": null}'
    )
    assert spec.ladder == (Rung("a", 240, 5),)
    assert spec.format == "fmp4" and spec.x264_tune == "" and spec.segment_fraction == 2
