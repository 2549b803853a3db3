"""The transcode worker as the main process runs it: FLV bytes on stdin, events on stdout.

Sources are made with PyAV (libx264 + AAC/MP3 into FLV); every segment the worker writes is
read back and decoded with PyAV.
"""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tests.media import EXPECTED_SIZES as SIZES
from tests.media import TEST_LADDER, video_packet_bytes
from vilokanam.packager.boxes import decode_times
from vilokanam.packager.fmp4 import read_tracks

FPS = 25


# -- sources -------------------------------------------------------------------------------


@dataclass
class Flv:
    data: bytes
    video_packets: list[bytes] = field(default_factory=list)
    audio_packets: int = 0


def _pattern(index: int, width: int, height: int) -> av.VideoFrame:
    """A moving gradient with noise, so x264 has something to encode."""
    rows, cols = np.indices((height, width), dtype=np.int32)
    rng = np.random.default_rng(index)
    image = np.stack(
        [(cols + index * 4) % 256, (rows * 2 + index) % 256, rng.integers(0, 48, (height, width))],
        axis=-1,
    ).astype(np.uint8)
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")


def make_flv(
    seconds: float = 12.0,
    *,
    size: tuple[int, int] = (640, 360),
    gop: int = 50,
    video: bool = True,
    audio: str | None = "aac",
    bframes: int = 0,
) -> Flv:
    """A test pattern (libx264, keyframe every ``gop`` frames) + 1 kHz tone as FLV bytes."""
    buffer = io.BytesIO()
    output = av.open(buffer, "w", format="flv")
    published = Flv(b"")
    vstream = astream = resampler = None
    if video:
        vstream = output.add_stream("libx264", rate=FPS)
        vstream.width, vstream.height = size
        vstream.pix_fmt = "yuv420p"
        vstream.codec_context.time_base = Fraction(1, FPS)
        vstream.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop),
                           "sc_threshold": "0", "bf": str(bframes)}  # fmt: skip
    if audio:
        astream = output.add_stream(audio, rate=44100)
        astream.layout = "stereo"
        size_out = astream.codec_context.frame_size or 1024
        resampler = av.AudioResampler(
            format=astream.codec_context.format, layout="stereo", rate=44100, frame_size=size_out
        )
    tone = (0.2 * np.sin(2 * np.pi * 1000 * np.arange(1024) / 44100)).astype(np.float32)
    samples = 0

    def mux(stream: Any, frame: Any) -> None:
        for packet in stream.encode(frame):
            published.audio_packets += stream is astream
            output.mux(packet)

    for index in range(round(seconds * FPS)):
        if vstream is not None:
            frame = _pattern(index, *size)
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            mux(vstream, frame)
        while astream is not None and samples < (index + 1) * 44100 // FPS:
            chunk = av.AudioFrame.from_ndarray(
                np.stack([tone, tone]), format="fltp", layout="stereo"
            )
            chunk.sample_rate, chunk.pts, chunk.time_base = 44100, samples, Fraction(1, 44100)
            for resampled in resampler.resample(chunk):  # type: ignore[union-attr]
                mux(astream, resampled)
            samples += 1024
    for stream in (vstream, astream):
        if stream is not None:
            mux(stream, None)
    output.close()
    published.data = buffer.getvalue()
    if video:  # as the FLV carries them (length-prefixed NAL units, as RTMP sends them)
        published.video_packets = video_packet_bytes(published.data)
    return published


# -- running the worker ----------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    output_dir: Path

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    def segments(self, rendition: str) -> list[dict[str, Any]]:
        return [e for e in self.of("segment") if e["rendition"] == rendition]

    def rendition(self, name: str) -> dict[str, Any]:
        (event,) = [e for e in self.of("rendition") if e["name"] == name]
        return event

    def init(self, name: str) -> bytes:
        path = self.rendition(name)["init"]
        return (self.output_dir / path).read_bytes() if path else b""

    def media(self, name: str, index: int) -> bytes:
        """Segment ``index`` of a rendition with its init segment: decodable alone."""
        return self.init(name) + (self.output_dir / self.segments(name)[index]["path"]).read_bytes()

    def whole(self, name: str) -> bytes:
        files = [(self.output_dir / e["path"]).read_bytes() for e in self.segments(name)]
        return self.init(name) + b"".join(files)


def run_worker(data: bytes, output_dir: Path, timeout: float = 60, **spec: Any) -> Run:
    full = {"output_dir": str(output_dir), "epoch": 0, "first_sequence": 0,
            "segment_duration": 2.0, "format": "fmp4", "source_rendition": True,
            "ladder": TEST_LADDER, "x264_preset": "veryfast", "x264_tune": "zerolatency",
            "audio_bitrate": 128000, **spec}  # fmt: skip
    process = subprocess.run(
        [sys.executable, "-m", "vilokanam.transcode.worker", json.dumps(full)],
        input=data,
        capture_output=True,
        timeout=timeout,
    )
    events = [json.loads(line) for line in process.stdout.decode().splitlines()]
    return Run(process.returncode, events, process.stderr.decode(), output_dir)


def decode(data: bytes) -> dict[str, list[Any]]:
    """Every frame of an fMP4/TS byte stream: video (pts s, size, key), audio (pts s, samples)."""
    container = av.open(io.BytesIO(data))
    frames: dict[str, list[Any]] = {"video": [], "audio": []}
    for frame in container.decode(*container.streams.video, *container.streams.audio):
        time = float(frame.pts * frame.time_base)
        if isinstance(frame, av.VideoFrame):
            frames["video"].append((time, (frame.width, frame.height), frame.key_frame))
        else:
            frames["audio"].append((time, frame.samples / frame.sample_rate))
    container.close()
    return frames


def assert_continuous(times: list[float], step: float, tolerance: float) -> None:
    gaps = np.diff(times)
    assert gaps.min() > 0, "timestamps go back"
    assert gaps.max() <= step + tolerance, f"gap of {gaps.max():.4f} s"


def assert_well_formed(run: Run) -> None:
    """Event order: ladder first, end last, each rendition announced before its segments."""
    assert run.returncode == 0, run.stderr
    assert run.events[0]["type"] == "ladder"
    assert run.events[-1] == {"type": "end"}
    announced: set[str] = set()
    for event in run.events:
        if event["type"] == "rendition":
            announced.add(event["name"])
        elif event["type"] == "segment":
            assert event["rendition"] in announced
            assert (run.output_dir / event["path"]).stat().st_size == event["size"]
    assert announced == set(run.events[0]["renditions"])
    assert not list(run.output_dir.rglob(".*.tmp")), "temporary files left behind"


# -- the ladder, fMP4 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def published() -> Flv:
    return make_flv(12.0)


@pytest.fixture(scope="module")
def ladder_run(published: Flv, tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("ladder")
    return run_worker(published.data, out, epoch=3, first_sequence=7)


def test_ladder_has_no_upscaled_rung(ladder_run: Run) -> None:
    assert_well_formed(ladder_run)
    assert ladder_run.events[0]["renditions"] == ["source", "240p", "180p"]
    for name, (width, height) in SIZES.items():
        info = ladder_run.rendition(name)
        assert (info["width"], info["height"]) == (width, height)
        assert info["frame_rate"] == pytest.approx(FPS)
        assert info["init"] == f"{name}/init-3.mp4", "init names carry the epoch"
        assert info["has_video"] and info["has_audio"]
        assert info["codecs"].startswith("avc1.") and info["codecs"].endswith(",mp4a.40.2")
        assert info["bandwidth"] > 0
    assert ladder_run.rendition("240p")["bandwidth"] == 440_000 + 128_000
    assert ladder_run.rendition("source")["codecs"].startswith("avc1.42c0"), "x264 ultrafast"
    assert ladder_run.rendition("240p")["codecs"].startswith("avc1.64"), "x264 veryfast: High"


def test_segments_share_numbers_and_boundaries(ladder_run: Run) -> None:
    reference = ladder_run.segments("source")
    assert [s["sequence"] for s in reference] == list(range(7, 7 + len(reference)))
    assert len(reference) == 6
    for segment in reference[:-1]:
        assert segment["duration"] == pytest.approx(2.0, rel=0.10)
    for before, after in itertools.pairwise(reference):
        assert after["start"] == pytest.approx(before["start"] + before["duration"], abs=1e-6)
    for name in SIZES:
        segments = ladder_run.segments(name)
        assert [(s["sequence"], s["start"], s["duration"]) for s in segments] == [
            (s["sequence"], s["start"], s["duration"]) for s in reference
        ]
        assert all(s["path"] == f"{name}/seg-{s['sequence']}.m4s" for s in segments)
        assert all(s["independent"] for s in segments)


def test_every_segment_decodes_alone_from_a_keyframe(ladder_run: Run) -> None:
    starts: dict[str, list[float]] = {}
    for name, size in SIZES.items():
        starts[name] = []
        for index, event in enumerate(ladder_run.segments(name)):
            frames = decode(ladder_run.media(name, index))
            assert frames["video"][0][2], "segment starts with a keyframe"
            assert {f[1] for f in frames["video"]} == {size}
            assert frames["audio"], "audio in every segment"
            assert frames["video"][0][0] == pytest.approx(event["start"], abs=0.002)
            starts[name].append(frames["video"][0][0])
    for name in SIZES:
        assert starts[name] == pytest.approx(starts["source"], abs=0.002), f"{name} cut elsewhere"


def test_renditions_play_continuously(ladder_run: Run, published: Flv) -> None:
    for name in SIZES:
        frames = decode(ladder_run.whole(name))
        video_times = [f[0] for f in frames["video"]]
        assert len(video_times) == len(published.video_packets) == 300
        assert_continuous(video_times, 1 / FPS, 0.002)
        audio_times = [f[0] for f in frames["audio"]]
        assert len(audio_times) >= published.audio_packets - 2
        assert_continuous(audio_times, 1024 / 44100, 1e-4)
        assert abs(audio_times[0] - video_times[0]) < 0.1, "audio and video start together"


def test_fragments_carry_the_stream_timeline(ladder_run: Run) -> None:
    """tfdt of each fragment = its segment's start (not 0 again in every segment)."""
    for name in SIZES:
        for event in ladder_run.segments(name):
            fragment = (ladder_run.output_dir / event["path"]).read_bytes()
            video, audio = read_tracks(ladder_run.init(name))
            video_tfdt, audio_tfdt = decode_times(fragment)
            assert video_tfdt / video.timescale == pytest.approx(event["start"], abs=0.001)
            assert audio_tfdt / audio.timescale == pytest.approx(event["start"], abs=0.03)


def test_source_rendition_is_the_published_video(ladder_run: Run, published: Flv) -> None:
    assert video_packet_bytes(ladder_run.whole("source")) == published.video_packets


def test_stats_are_reported(ladder_run: Run) -> None:
    stats = ladder_run.of("stats")
    assert stats and stats[-1]["frames"] == 300 and stats[-1]["speed"] >= 0


# -- formats and unusual sources ---------------------------------------------------------------


def test_mpegts_segments(published: Flv, tmp_path: Path) -> None:
    run = run_worker(published.data, tmp_path, format="mpegts", ladder=TEST_LADDER[3:])
    assert_well_formed(run)
    assert run.rendition("180p")["init"] is None
    for name in ("source", "180p"):
        segments = run.segments(name)
        assert all(s["path"].endswith(".ts") for s in segments)
        offsets = []
        for index, event in enumerate(segments):
            frames = decode(run.media(name, index))
            assert frames["video"][0][2] and frames["audio"]
            offsets.append(frames["video"][0][0] - event["start"])
        assert max(offsets) - min(offsets) < 0.002, "one constant TS offset for all segments"
        whole = decode(run.whole(name))
        assert len(whole["video"]) == 300
        assert_continuous([f[0] for f in whole["video"]], 1 / FPS, 0.002)


def test_audio_only_source(tmp_path: Path) -> None:
    source = make_flv(7.0, video=False)
    run = run_worker(source.data, tmp_path)
    assert_well_formed(run)
    assert run.events[0]["renditions"] == ["source"]
    info = run.rendition("source")
    assert info["codecs"] == "mp4a.40.2"
    assert info["width"] is info["height"] is info["frame_rate"] is None
    assert not info["has_video"] and info["has_audio"]
    segments = run.segments("source")
    assert len(segments) == 4
    assert all(s["duration"] == pytest.approx(2.0, abs=0.03) for s in segments[:-1])
    frames = decode(run.whole("source"))
    assert not frames["video"] and len(frames["audio"]) >= source.audio_packets - 2
    assert_continuous([f[0] for f in frames["audio"]], 1024 / 44100, 1e-4)


def test_video_only_source(tmp_path: Path) -> None:
    source = make_flv(6.0, audio=None)
    run = run_worker(source.data, tmp_path, ladder=TEST_LADDER[3:])
    assert_well_formed(run)
    assert run.events[0]["renditions"] == ["source", "180p"]
    for name in ("source", "180p"):
        info = run.rendition(name)
        assert info["has_video"] and not info["has_audio"]
        assert "mp4a" not in info["codecs"]
        frames = decode(run.whole(name))
        assert len(frames["video"]) == 150 and not frames["audio"]


def test_mp3_audio_is_reencoded_to_aac(tmp_path: Path) -> None:
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this PyAV build has no MP3 encoder to make an MP3-in-FLV source")
    source = make_flv(6.0, audio="libmp3lame")
    run = run_worker(source.data, tmp_path, ladder=TEST_LADDER[3:])
    assert_well_formed(run)
    assert any("re-encoded to AAC" in w["message"] for w in run.of("warning"))
    for name in ("source", "180p"):
        assert run.rendition(name)["codecs"].endswith(",mp4a.40.2")
        container = av.open(io.BytesIO(run.whole(name)))
        assert container.streams.audio[0].codec_context.name == "aac"
        container.close()
        frames = decode(run.whole(name))
        audio_times = [f[0] for f in frames["audio"]]
        assert audio_times[-1] - audio_times[0] == pytest.approx(6.0, abs=0.1)
        assert_continuous(audio_times, 1024 / 44100, 1e-4)


def test_long_source_gop_warns_and_lengthens_segments(tmp_path: Path) -> None:
    source = make_flv(8.0, gop=75, size=(320, 180))  # 3 s keyframe interval, 2 s segments
    run = run_worker(source.data, tmp_path, ladder=[])
    assert_well_formed(run)
    warnings = [w for w in run.of("warning") if "keyframe interval" in w["message"]]
    assert len(warnings) == 1
    durations = [s["duration"] for s in run.segments("source")]
    assert durations[:-1] == pytest.approx([3.0, 3.0])


def test_b_frames_keep_their_presentation_times(tmp_path: Path) -> None:
    source = make_flv(6.0, bframes=2)
    truth = sorted(f.pts for f in av.open(io.BytesIO(source.data)).decode(video=0))
    run = run_worker(source.data, tmp_path, ladder=TEST_LADDER[2:], x264_tune="")
    assert_well_formed(run)
    for name in ("source", "240p"):
        times = [round(f[0] * 1000) for f in decode(run.whole(name))["video"]]
        assert times == truth, f"{name}: presentation times as published"
    assert video_packet_bytes(run.whole("source")) == source.video_packets


def test_corrupt_input_fails_with_a_message(tmp_path: Path) -> None:
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8))
    run = run_worker(garbage, tmp_path, timeout=30)
    assert run.returncode != 0
    assert "transcode failed" in run.stderr
    assert not run.of("end")


def test_flv_header_then_garbage_fails(tmp_path: Path) -> None:
    start = make_flv(1.0, size=(320, 180)).data[:4000]
    garbage = bytes(np.random.default_rng(2).integers(0, 256, 300_000, dtype=np.uint8))
    run = run_worker(start + garbage, tmp_path, timeout=30)
    assert run.returncode == 1 and "transcode failed" in run.stderr


def test_scrambled_video_fails_with_a_message(tmp_path: Path) -> None:
    """Valid FLV framing, garbage H.264: the decoder gives up, so does the worker."""
    data = bytearray(make_flv(4.0).data)
    rng = np.random.default_rng(3)
    offset, tags = 13, 0
    while offset + 11 <= len(data):
        size = int.from_bytes(data[offset + 1 : offset + 4], "big")
        if data[offset] == 9 and tags > 40:  # a video tag after the stream has been probed
            body = offset + 11 + 5  # keep the FLV video header (frame type, CTS)
            data[body : offset + 11 + size] = rng.bytes(size - 5)
        tags += 1
        offset += 11 + size + 4
    run = run_worker(bytes(data), tmp_path, timeout=30, source_rendition=False)
    assert run.returncode == 1
    assert "corrupt input: video decode failed" in run.stderr


def test_garbage_inside_the_stream_never_hangs(tmp_path: Path) -> None:
    """The FLV demuxer resyncs past junk: the worker ends cleanly or with a message."""
    data = make_flv(4.0, size=(320, 180)).data
    garbage = bytes(np.random.default_rng(4).integers(0, 256, 300_000, dtype=np.uint8))
    run = run_worker(data[: len(data) // 2] + garbage + data[len(data) // 2 :], tmp_path)
    assert (run.returncode == 0 and run.of("end")) or "transcode failed" in run.stderr
    assert "Traceback" not in run.stderr
