"""The worker process makes poster thumbnails from source keyframes, with or without rungs."""

from __future__ import annotations

import io
from pathlib import Path

import av
import pytest

from tests.integration.test_worker import assert_well_formed, make_flv, run_worker


@pytest.mark.parametrize("ladder", [True, False], ids=["ladder", "passthrough-only"])
def test_thumbnails_first_at_once_then_per_interval(tmp_path: Path, ladder: bool) -> None:
    published = make_flv(12.0)  # keyframes every 2 s
    spec = {"thumbnail_interval": 5, "thumbnail_width": 320}
    if not ladder:
        spec["ladder"] = []  # type: ignore[assignment]
    run = run_worker(published.data, tmp_path, **spec)
    assert_well_formed(run)
    thumbnails = run.of("thumbnail")
    times = [event["time"] for event in thumbnails]
    assert times == pytest.approx([0.0, 6.0], abs=0.1), "0 s, then the first keyframe ≥ 5 s"
    assert all(event["path"] == "thumbnail.jpg" for event in thumbnails)
    first = run.events.index(thumbnails[0])
    assert first < 2 + len(run.of("rendition")) + len(run.of("warning")) + 3, "made at once"
    data = (tmp_path / "thumbnail.jpg").read_bytes()
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (320, 180)


def test_older_specs_without_thumbnail_keys_still_get_one(tmp_path: Path) -> None:
    run = run_worker(make_flv(3.0).data, tmp_path)  # no thumbnail_* keys: 30 s / 640
    assert_well_formed(run)
    assert len(run.of("thumbnail")) == 1
    assert (tmp_path / "thumbnail.jpg").stat().st_size > 1000


def test_audio_only_makes_no_thumbnail(tmp_path: Path) -> None:
    run = run_worker(make_flv(3.0, video=False).data, tmp_path)
    assert_well_formed(run)
    assert run.of("thumbnail") == [] and not (tmp_path / "thumbnail.jpg").exists()
