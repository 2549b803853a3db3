"""Our transcode worker vs the ffmpeg CLI doing the identical ladder on the same source.

    .venv/bin/python bench/transcode.py [--seconds 60] [--size 1280x720] [--fps 30]

The source is testsrc2 with temporal noise (so x264 has real work) + a 1 kHz tone, H.264 with a
keyframe every 2 s and AAC in FLV, as OBS would publish it. Both sides get the whole file as
fast as they can read it and produce the same renditions: the source passed through, every
configured rung below the source height scaled (bicubic) and encoded with x264 (same preset,
tune, bitrate, maxrate, bufsize, IDR every 2 s, no B-frames), AAC copied, 2 s fMP4 segments.
CPU time is the children's user + sys time from ``getrusage``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vilokanam.transcode.ladder import PlannedRung, Rung, plan_ladder  # noqa: E402

LADDER = [Rung("720p", 720, 3_000_000), Rung("480p", 480, 1_400_000), Rung("360p", 360, 800_000)]
PRESET, TUNE, SEGMENT = "veryfast", "zerolatency", 2.0


@dataclass
class Result:
    name: str
    wall: float
    cpu: float
    media: float

    @property
    def realtime(self) -> float:
        return self.media / self.wall


def make_source(path: Path, seconds: int, size: str, fps: int, ffmpeg: str) -> None:
    video = f"testsrc2=size={size}:rate={fps}:duration={seconds},noise=alls=12:allf=t+u"
    audio = f"sine=frequency=1000:sample_rate=48000:duration={seconds}"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio,
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4500k", "-maxrate", "4500k",
         "-bufsize", "9000k", "-g", str(2 * fps), "-keyint_min", str(2 * fps),
         "-sc_threshold", "0", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", "-f", "flv", str(path)],
        check=True,
    )  # fmt: skip


def measured(name: str, media: float, command: list[str], stdin_path: Path | None) -> Result:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(stdin_path, "rb") if stdin_path else open("/dev/null", "rb") as stdin:
        done = subprocess.run(command, stdin=stdin, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Result(name, wall, cpu, media)


def worker_command(out: Path) -> list[str]:
    spec = {
        "output_dir": str(out), "epoch": 0, "first_sequence": 0, "segment_duration": SEGMENT,
        "format": "fmp4", "source_rendition": True,
        "ladder": [vars(rung) for rung in LADDER],
        "x264_preset": PRESET, "x264_tune": TUNE, "audio_bitrate": 128_000,
    }  # fmt: skip
    return [sys.executable, "-m", "vilokanam.transcode.worker", json.dumps(spec)]


def ffmpeg_command(ffmpeg: str, source: Path, out: Path, rungs: list[PlannedRung]) -> list[str]:
    hls = ["-f", "hls", "-hls_time", str(SEGMENT), "-hls_segment_type", "fmp4",
           "-hls_playlist_type", "event"]  # fmt: skip
    (out / "source").mkdir(parents=True)
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(source)]
    if rungs:
        labels = [f"[s{i}]" for i in range(len(rungs))]
        graph = f"[0:v]split={len(rungs)}{''.join(labels)}"
        for label, rung in zip(labels, rungs, strict=True):
            graph += f";{label}scale={rung.width}:{rung.height}[{rung.name}]"
        command += ["-filter_complex", graph]
    command += ["-map", "0:v", "-map", "0:a", "-c", "copy", *hls, str(out / "source/index.m3u8")]
    for rung in rungs:
        (out / rung.name).mkdir()
        command += [
            "-map", f"[{rung.name}]", "-map", "0:a",
            "-c:v", "libx264", "-preset", PRESET, "-tune", TUNE,
            "-b:v", str(rung.video_bitrate), "-maxrate", str(rung.maxrate),
            "-bufsize", str(rung.bufsize), "-bf", "0", "-sc_threshold", "0", "-g", "600",
            "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT})",
            "-c:a", "copy", *hls, str(out / rung.name / "index.m3u8"),
        ]  # fmt: skip
    return command


def count_segments(out: Path) -> dict[str, int]:
    return {d.name: len(list(d.glob("*.m4s"))) for d in sorted(out.iterdir()) if d.is_dir()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--ffmpeg", default=shutil.which("ffmpeg") or "ffmpeg")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rungs = plan_ladder(width, height, LADDER)
    with tempfile.TemporaryDirectory(prefix="vilokanam-bench-") as temp:
        work = Path(temp)
        source = work / "source.flv"
        print(f"source: {args.seconds} s {args.size} {args.fps} fps, testsrc2 + noise, AAC")
        make_source(source, args.seconds, args.size, args.fps, args.ffmpeg)
        ladder = ", ".join(
            f"{r.name} {r.width}x{r.height} {r.video_bitrate // 1000}k" for r in rungs
        )
        print(f"ladder: source (copy), {ladder}; x264 {PRESET}/{TUNE}; AAC copied")
        ours = measured("vilokanam worker", args.seconds, worker_command(work / "ours"), source)
        theirs = measured(
            "ffmpeg CLI",
            args.seconds,
            ffmpeg_command(args.ffmpeg, source, work / "ff", rungs),
            None,
        )
        print(
            f"segments: ours {count_segments(work / 'ours')}, ffmpeg {count_segments(work / 'ff')}"
        )
    print()
    print(f"{'':18} {'wall s':>8} {'CPU s':>8} {'x realtime':>11} {'CPU s / media s':>16}")
    for result in (ours, theirs):
        print(
            f"{result.name:18} {result.wall:8.2f} {result.cpu:8.2f} {result.realtime:11.2f}"
            f" {result.cpu / result.media:16.3f}"
        )
    print(
        f"{'ours / ffmpeg':18} {ours.wall / theirs.wall:8.2f} {ours.cpu / theirs.cpu:8.2f}"
        f" {ours.realtime / theirs.realtime:11.2f}"
    )


if __name__ == "__main__":
    main()
