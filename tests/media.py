"""Real publishers (PyAV's and ffmpeg's RTMP clients) and an HLS reader for end-to-end tests."""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from fractions import Fraction

import av
import m3u8
import numpy as np

TEST_LADDER = [
    {"name": "720p", "height": 720, "video_bitrate": 3_000_000},  # above the source: dropped
    {"name": "360p", "height": 360, "video_bitrate": 800_000},  # equal to the source: dropped
    {"name": "240p", "height": 240, "video_bitrate": 400_000},
    {"name": "180p", "height": 180, "video_bitrate": 250_000},
]
"""A ladder for a 640x360 test source: two rungs kept, two dropped (no upscaling)."""
EXPECTED_SIZES = {"source": (640, 360), "240p": (426, 240), "180p": (320, 180)}


@dataclass
class Published:
    """What a test publisher sent: video packets as on the wire (AVCC), in decode order."""

    video_packets: list[bytes] = field(default_factory=list)
    audio_packets: int = 0


def annexb_to_avcc(packet: bytes) -> bytes:
    """Annex B (start codes, as libx264 emits) → 4-byte length prefixes, as FLV/RTMP carry H.264."""
    if not packet.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return packet  # already length-prefixed
    nal_units = []
    for chunk in packet.split(b"\x00\x00\x01")[1:]:
        nal_units.append(chunk[:-1] if chunk.endswith(b"\x00") else chunk)
    return b"".join(len(nal).to_bytes(4, "big") + nal for nal in nal_units if nal)


def _pattern_frame(index: int, width: int, height: int) -> av.VideoFrame:
    """A moving test pattern that x264 cannot compress to nothing."""
    y = np.indices((height, width)).sum(axis=0)
    image = np.stack(
        [(y + index * 4) % 256, (y * 2 + index) % 256, np.full((height, width), (index * 7) % 256)],
        axis=-1,
    ).astype(np.uint8)
    return av.VideoFrame.from_ndarray(image, format="rgb24")


def publish_pyav(url: str, **options: float) -> Published:
    """Publish with PyAV from a child process (see :func:`publish_pyav_here` for options).

    A child process, because libavformat keeps the GIL during its RTMP handshake: in the
    test's own process it would freeze a server running in a thread of that process.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(publish_pyav_here, url, **options).result(timeout=300)


def publish_pyav_here(
    url: str,
    *,
    seconds: float = 12.0,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    gop: int = 50,
    audio: bool = True,
    video: bool = True,
    pace: float = 4.0,
    start_ms: int = 0,
) -> Published:
    """Publish a test pattern + 1 kHz tone with libavformat's RTMP client (through PyAV).

    ``pace`` is the speed relative to real time (1.0 = like ``ffmpeg -re``).
    """
    published = Published()
    output = av.open(url, "w", format="flv")
    vstream = astream = None
    if video:
        vstream = output.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.options = {
            "preset": "veryfast",
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "bf": "0",
        }
        vstream.codec_context.time_base = Fraction(1, fps)
    if audio:
        astream = output.add_stream("aac", rate=44100)
        astream.layout = "stereo"
    started = time.monotonic()
    total_frames = int(seconds * fps)
    samples_per_frame = 1024
    audio_clock = 0
    tone = 0.2 * np.sin(2 * np.pi * 1000 * np.arange(44100 * (seconds + 1)) / 44100)
    try:
        for index in range(total_frames):
            media_time = index / fps
            if vstream is not None:
                frame = _pattern_frame(index, width, height).reformat(format="yuv420p")
                frame.pts = index + start_ms * fps // 1000
                frame.time_base = Fraction(1, fps)
                for packet in vstream.encode(frame):
                    published.video_packets.append(annexb_to_avcc(bytes(packet)))
                    output.mux(packet)
            while astream is not None and audio_clock < (index + 1) / fps * 44100:
                chunk = tone[audio_clock : audio_clock + samples_per_frame]
                stereo = np.stack([chunk, chunk]).astype(np.float32)
                aframe = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
                aframe.sample_rate = 44100
                aframe.pts = audio_clock + start_ms * 44100 // 1000
                aframe.time_base = Fraction(1, 44100)
                for packet in astream.encode(aframe):
                    published.audio_packets += 1
                    output.mux(packet)
                audio_clock += samples_per_frame
            ahead = media_time / pace - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        for stream in (vstream, astream):
            if stream is None:
                continue
            for packet in stream.encode(None):
                if stream is vstream:
                    published.video_packets.append(annexb_to_avcc(bytes(packet)))
                else:
                    published.audio_packets += 1
                output.mux(packet)
    finally:
        output.close()
    return published


def ffmpeg_publish_command(
    ffmpeg: str, url: str, *, seconds: float = 12.0, readrate: float = 2.0
) -> list[str]:
    """The ffmpeg CLI publishing a 640x360 test pattern + tone, 2 s keyframe interval."""
    return [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-readrate", str(readrate),
        "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=1000:sample_rate=48000:duration={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-keyint_min", "50",
        "-sc_threshold", "0", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-f", "flv", url,
    ]  # fmt: skip


def run_ffmpeg_publish(ffmpeg: str, url: str, **kwargs: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ffmpeg_publish_command(ffmpeg, url, **kwargs), capture_output=True, text=True, timeout=120
    )


# -- reading HLS over HTTP ------------------------------------------------------------------


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def wait_for(url: str, timeout: float = 30.0, predicate=lambda body: True) -> bytes:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body, _ = http_get(url)
        if status == 200 and predicate(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} not available within {timeout} s")


@dataclass
class Rendition:
    name: str
    stream_info: object
    playlist: m3u8.M3U8
    init: bytes | None
    segments: list[bytes]

    def media(self, index: int) -> bytes:
        return (self.init or b"") + self.segments[index]

    def whole(self) -> bytes:
        return (self.init or b"") + b"".join(self.segments)


def read_ladder(master_url: str) -> dict[str, Rendition]:
    """Fetch the master, every media playlist and every segment it names."""
    status, body, _ = http_get(master_url)
    assert status == 200, f"master playlist: HTTP {status}"
    master = m3u8.loads(body.decode(), uri=master_url)
    renditions = {}
    for variant in master.playlists:
        url = variant.absolute_uri
        status, text, _ = http_get(url)
        assert status == 200, f"{url}: HTTP {status}"
        playlist = m3u8.loads(text.decode(), uri=url)
        init = None
        if playlist.segment_map:
            init_status, init, _ = http_get(playlist.segment_map[0].absolute_uri)
            assert init_status == 200
        segments = []
        for segment in playlist.segments:
            seg_status, data, _ = http_get(segment.absolute_uri)
            assert seg_status == 200, f"{segment.absolute_uri}: HTTP {seg_status}"
            segments.append(data)
        name = url.rsplit("/", 2)[-2]
        renditions[name] = Rendition(name, variant.stream_info, playlist, init, segments)
    return renditions


def decode_summary(data: bytes) -> dict[str, object]:
    """Decode every frame of an HLS segment (with its init); sizes, first video pts, counts."""
    container = av.open(io.BytesIO(data))
    summary: dict[str, object] = {"video_frames": 0, "audio_frames": 0, "first_video_pts": None}
    for frame in container.decode(*container.streams.video, *container.streams.audio):
        if isinstance(frame, av.VideoFrame):
            summary["video_frames"] = int(summary["video_frames"]) + 1  # type: ignore[arg-type]
            summary["size"] = (frame.width, frame.height)
            if summary["first_video_pts"] is None:
                summary["first_video_pts"] = float(frame.pts * frame.time_base)
        else:
            summary["audio_frames"] = int(summary["audio_frames"]) + 1  # type: ignore[arg-type]
    container.close()
    return summary


def video_packet_bytes(data: bytes) -> list[bytes]:
    """Video packets of an fMP4/TS byte stream in decode order, as bytes."""
    container = av.open(io.BytesIO(data))
    packets = [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]
    container.close()
    return packets
