"""Poster thumbnails: sizes, a valid JPEG from a synthetic keyframe, when one is due, and cost."""

from __future__ import annotations

import io
import json
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vilokanam.transcode.events import EventWriter
from vilokanam.transcode.spec import SpecError, WorkerSpec
from vilokanam.transcode.thumbnail import (
    THUMBNAIL,
    ThumbnailMaker,
    decode_keyframe,
    encode_jpeg,
    thumbnail_size,
)


def _frame(width: int, height: int) -> av.VideoFrame:
    rows, cols = np.indices((height, width))
    image = np.stack([cols % 256, rows % 256, (cols + rows) % 256], axis=-1).astype(np.uint8)
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")


def _jpeg_picture(data: bytes) -> av.VideoFrame:
    assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9", "JPEG SOI … EOI"
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "mjpeg"
        return next(container.decode(video=0))


def _keyframes(
    width: int, height: int, count: int = 3, gop: int = 10
) -> tuple[bytes, list[av.Packet]]:
    """H.264 keyframe packets (as a demuxer hands them over) with the stream's extradata."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flv") as output:
        stream = output.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "bf": "0"}
        for index in range(count * gop):
            frame = _frame(width, height)
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    buffer.seek(0)
    container = av.open(buffer, format="flv")
    video = container.streams.video[0]
    packets = [p for p in container.demux(video) if p.size and p.is_keyframe]
    return video.codec_context.extradata or b"", packets


@pytest.mark.parametrize(
    ("source", "target", "sar", "expected"),
    [
        ((1280, 720), 640, Fraction(1), (640, 360)),
        ((1920, 1080), 640, Fraction(1), (640, 360)),
        ((640, 480), 320, Fraction(1), (320, 240)),
        ((320, 180), 640, Fraction(1), (320, 180)),  # never upscaled
        ((720, 576), 640, Fraction(16, 15), (640, 480)),  # anamorphic PAL 4:3
        ((1280, 720), 333, Fraction(1), (332, 186)),  # even both ways
        ((100, 1000), 640, Fraction(1), (100, 1000)),  # portrait
    ],
)
def test_size_keeps_aspect_and_is_even(
    source: tuple[int, int], target: int, sar: Fraction, expected: tuple[int, int]
) -> None:
    width, height = thumbnail_size(*source, target, sar)
    assert (width, height) == expected
    assert width % 2 == 0 and height % 2 == 0
    display = source[0] * sar / source[1]
    assert abs(width / height - display) / display < 0.02


def test_jpeg_of_a_synthetic_frame() -> None:
    data = encode_jpeg(_frame(1280, 720), 640, 360)
    picture = _jpeg_picture(data)
    assert (picture.width, picture.height) == (640, 360)
    assert 2_000 < len(data) < 200_000
    # The gradient survives: left column dark, right column bright in the first plane.
    luma = picture.to_ndarray(format="gray")
    assert luma[:, :8].mean() < luma[:, -8:].mean()


def _maker(
    folder: Path,
    extradata: bytes,
    size: tuple[int, int],
    out: io.StringIO,
    *,
    interval: float,
    target_width: int,
) -> ThumbnailMaker:
    """A maker for an H.264 source of ``size`` with square pixels, events into ``out``."""
    return ThumbnailMaker(
        codec="h264",
        extradata=extradata,
        width=size[0],
        height=size[1],
        sample_aspect=Fraction(1),
        output_dir=folder,
        events=EventWriter(out),
        interval=interval,
        target_width=target_width,
    )


def test_a_keyframe_decodes_on_its_own_decoder() -> None:
    extradata, keys = _keyframes(640, 360)
    frame = decode_keyframe("h264", extradata, bytes(keys[1]))
    assert (frame.width, frame.height) == (640, 360)


def test_maker_takes_the_first_keyframe_then_one_per_interval(tmp_path: Path) -> None:
    extradata, keys = _keyframes(640, 360, count=4)
    out = io.StringIO()
    maker = _maker(tmp_path, extradata, (640, 360), out, interval=30, target_width=320)
    times = [Fraction(0), Fraction(10), Fraction(29), Fraction(30)]
    taken = []
    for packet, at in zip(keys, times, strict=True):
        taken.append(maker.offer(packet, at))
        maker.close()  # let each finish, as 2 s between keyframes would
    assert taken == [True, False, False, True]
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["type"] for e in events] == ["thumbnail", "thumbnail"]
    assert events[0]["path"] == THUMBNAIL == "thumbnail.jpg"
    picture = _jpeg_picture((tmp_path / THUMBNAIL).read_bytes())
    assert (picture.width, picture.height) == (320, 180)
    assert not list(tmp_path.glob(".*.tmp"))
    assert maker.made == 2 and maker.failed == 0


def test_a_bad_keyframe_leaves_the_next_one_due(tmp_path: Path) -> None:
    extradata, keys = _keyframes(640, 360, count=2)
    out = io.StringIO()
    maker = _maker(tmp_path, extradata, (640, 360), out, interval=30, target_width=640)
    assert maker.offer(av.Packet(b"\x00\x00\x00\x05garbage"), Fraction(0))
    maker.close()
    assert maker.failed == 1 and not (tmp_path / THUMBNAIL).exists()
    assert maker.offer(keys[1], Fraction(2)), "still due after a failure"
    maker.close()
    assert (tmp_path / THUMBNAIL).is_file()
    kinds = [json.loads(line)["type"] for line in out.getvalue().splitlines()]
    assert kinds == ["warning", "thumbnail"]


def test_offer_never_waits_for_a_thumbnail_in_progress(tmp_path: Path) -> None:
    extradata, keys = _keyframes(1280, 720, count=2)
    maker = _maker(
        tmp_path, extradata, (1280, 720), io.StringIO(), interval=0.001, target_width=640
    )
    started = time.perf_counter()
    assert maker.offer(keys[0], Fraction(0))
    assert not maker.offer(keys[1], Fraction(1)), "busy: skipped, not queued"
    assert time.perf_counter() - started < 0.01, "the demux loop does not wait"
    maker.close()
    assert maker.made == 1


def test_cost_per_thumbnail_is_small(tmp_path: Path) -> None:
    """A 720p keyframe → 640x360 JPEG: decode, scale, encode and write, well under 0.2 s."""
    extradata, keys = _keyframes(1280, 720, count=6)
    maker = _maker(tmp_path, extradata, (1280, 720), io.StringIO(), interval=1, target_width=640)
    for index, packet in enumerate(keys):
        maker.offer(packet, Fraction(index * 2))
        maker.close()
    assert maker.made == len(keys)
    per_thumbnail = maker.seconds / maker.made
    print(f"thumbnail cost: {per_thumbnail * 1000:.1f} ms")
    assert per_thumbnail < 0.2


def test_spec_thumbnail_fields_default_and_validate() -> None:
    spec = WorkerSpec.from_dict({"output_dir": "/tmp/x"})
    assert (spec.thumbnail_interval, spec.thumbnail_width) == (30.0, 640)
    spec = WorkerSpec.from_dict(
        {"output_dir": "/tmp/x", "thumbnail_interval": 0, "thumbnail_width": 320}
    )
    assert (spec.thumbnail_interval, spec.thumbnail_width) == (0.0, 320)
    for bad in ({"thumbnail_interval": -1}, {"thumbnail_width": 4}, {"thumbnail_width": "x"}):
        with pytest.raises(SpecError):
            WorkerSpec.from_dict({"output_dir": "/tmp/x", **bad})
