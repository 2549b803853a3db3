"""The real `vilokanam serve` process, as the README starts it: banner, publish, watch, stop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, require_tool
from tests.media import decode_summary, read_ladder, run_ffmpeg_publish, wait_for

pytestmark = pytest.mark.e2e


def test_first_start_prints_demo_urls_that_work(tmp_path: Path) -> None:
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI publishes to the printed URL")
    config = tmp_path / "vilokanam.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\npublic_host = "127.0.0.1"\n'
        f"[rtmp]\nport = {free_port()}\nreconnect_window = 1.0\n"
        f"[http]\nport = {free_port()}\n"
    )
    command = [str(Path(sys.executable).with_name("vilokanam")), "serve", "--config", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            output.append(line)
            if "Watch:" in line:
                break
        text = "".join(output)
        server = re.search(r"Server: (rtmp://\S+)", text)
        key = re.search(r"Stream key: (\S+)", text)
        watch = re.search(r"Watch: (http://\S+)", text)
        assert server and key and watch, text
        assert watch.group(1).endswith("/live/demo/master.m3u8")

        result = run_ffmpeg_publish(
            ffmpeg, f"{server.group(1)}/{key.group(1)}", seconds=6, readrate=3
        )
        assert result.returncode == 0, result.stderr
        first = wait_for(watch.group(1), 30).decode().split("\n")
        media = next(line for line in first if line.endswith(".m3u8"))
        wait_for(watch.group(1).replace("master.m3u8", media), 30, lambda b: b"ENDLIST" in b)
        ladder = read_ladder(watch.group(1))
        assert decode_summary(ladder["source"].whole())["video_frames"] == 150
    finally:
        process.send_signal(signal.SIGTERM)
        remaining, _ = process.communicate(timeout=30)
    assert process.returncode == 0, "".join(output) + remaining

    # A second start finds the channel and does not print a key again.
    again = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    again.send_signal(signal.SIGTERM)
    text, _ = again.communicate(timeout=30)
    assert "Stream key" not in text and "/live/demo/master.m3u8" in text
