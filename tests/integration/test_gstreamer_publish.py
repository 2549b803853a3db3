"""GStreamer's RTMP clients as publishers (rtmp2sink adds a data stream PyAV must ignore)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import require_tool
from tests.media import decode_summary, read_ladder, wait_for

pytestmark = pytest.mark.e2e


def _require_element(gst_inspect: str, element: str) -> None:
    if subprocess.run([gst_inspect, element], capture_output=True).returncode != 0:
        require_tool(f"gstreamer-element-{element}", f"GStreamer element {element} is missing")


@pytest.mark.parametrize("sink", ["rtmp2sink", "rtmpsink"])
def test_gstreamer_publish_plays(start_server, sink: str) -> None:  # type: ignore[no-untyped-def]
    launch = require_tool("gst-launch-1.0", "GStreamer is a real RTMP publisher")
    inspect = require_tool("gst-inspect-1.0", "to find GStreamer elements")
    for element in (sink, "x264enc", "flvmux", "voaacenc"):
        _require_element(inspect, element)
    server = start_server()
    key = server.create_channel("gst")
    url = f"{server.rtmp_base}/{key}"
    pipeline = (
        "videotestsrc num-buffers=200 pattern=ball "
        "! video/x-raw,width=640,height=360,framerate=25/1,format=I420 "
        "! x264enc tune=zerolatency speed-preset=veryfast key-int-max=50 "
        "! h264parse ! flvmux name=mux streamable=true "
        f"! {sink} location={url} "
        "audiotestsrc num-buffers=345 samplesperbuffer=1024 ! audio/x-raw,rate=44100 "
        "! audioconvert ! voaacenc ! aacparse ! mux."
    )
    result = subprocess.run(
        [launch, "-e", *pipeline.split()], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    master_url = f"{server.http_base}/live/gst/master.m3u8"
    wait_for(master_url, 30)
    wait_for(f"{server.http_base}/live/gst/source/index.m3u8", 30, lambda b: b"ENDLIST" in b)
    summary = decode_summary(read_ladder(master_url)["source"].whole())
    assert summary["size"] == (640, 360)
    assert summary["video_frames"] == 200
    assert summary["audio_frames"] > 0
