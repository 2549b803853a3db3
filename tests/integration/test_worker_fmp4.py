"""CMAF fragments as the worker writes them: box layout, timing, and a real decode."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np

from vilokanam.packager.boxes import decode_times, find_boxes, iter_boxes
from vilokanam.packager.fmp4 import Track, fragment, read_tracks
from vilokanam.packager.packets import MediaPacket
from vilokanam.packager.segmenter import SegmentMuxer
from vilokanam.transcode.encoder import VideoEncoder
from vilokanam.transcode.ladder import PlannedRung

MS = Fraction(1, 1000)


def trun_entries(data: bytes, traf_index: int) -> tuple[int, list[tuple[int, int, int, int]]]:
    """(data_offset, [(duration, size, flags, composition offset)]) of one traf's trun."""
    trun = find_boxes(data, "moof/traf/trun")[traf_index]
    count, offset = struct.unpack_from(">Ii", data, trun.payload + 4)
    entries = [struct.unpack_from(">IIIi", data, trun.payload + 12 + 16 * i) for i in range(count)]
    return offset, entries


def test_fragment_layout_and_timing() -> None:
    video = [  # B-frame order: I(pts 80) P(200) B(120) B(160), decode times 0, 40, 80, 120
        MediaPacket(b"\x00\x00\x00\x01\x65" + b"i" * 9, 5080, 5000, 40, MS, True),
        MediaPacket(b"\x00\x00\x01\x41" + b"p" * 5, 5200, 5040, 40, MS, False),
        MediaPacket(b"\x00\x00\x01\x01b", 5120, 5080, 40, MS, False),
        MediaPacket(b"\x00\x00\x01\x01c", 5160, 5120, 40, MS, False),
    ]
    audio = [
        MediaPacket(bytes([i]) * 7, 4990 + 23 * i, 4990 + 23 * i, 23, MS, True) for i in range(3)
    ]
    tracks = [Track(1, 16000, annexb=True), Track(2, 44100)]
    data = fragment(tracks, [video, audio], 42)

    assert [box.type for box in iter_boxes(data)] == ["moof", "mdat"]
    (mfhd,) = find_boxes(data, "moof/mfhd")
    assert struct.unpack_from(">I", data, mfhd.payload + 4)[0] == 42
    tfhds = find_boxes(data, "moof/traf/tfhd")
    assert [struct.unpack_from(">I", data, b.payload + 4)[0] for b in tfhds] == [1, 2]
    assert decode_times(data) == [5000 * 16, round(4.990 * 44100)], "tfdt = first decode time"

    offset, entries = trun_entries(data, 0)
    assert [e[0] for e in entries] == [640, 640, 640, 640], "dts deltas, last from duration"
    assert [e[3] for e in entries] == [1280, 2560, 640, 640], "composition offsets"
    assert [e[2] >> 16 & 1 for e in entries] == [0, 1, 1, 1], "only the IDR is a sync sample"
    first = data[offset : offset + entries[0][1]]
    assert first == b"\x00\x00\x00\x0a\x65" + b"i" * 9, "Annex B → 4-byte NAL sizes"

    offset, entries = trun_entries(data, 1)
    assert [e[1] for e in entries] == [7, 7, 7]
    assert data[offset : offset + 21] == b"\x00" * 7 + b"\x01" * 7 + b"\x02" * 7


def test_empty_tracks_are_left_out() -> None:
    packet = MediaPacket(b"abc", 0, 0, 1024, Fraction(1, 44100), True)
    data = fragment([Track(1, 16000), Track(2, 44100)], [[], [packet]], 1)
    tfhds = find_boxes(data, "moof/traf/tfhd")
    assert [struct.unpack_from(">I", data, b.payload + 4)[0] for b in tfhds] == [2]


def test_encoder_output_decodes_on_its_timeline() -> None:
    """libx264 packets (Annex B, IDR forced at 2 s) in two fragments after a libavformat init."""
    rung = PlannedRung("x", 320, 180, 300_000)
    encoder = VideoEncoder(
        rung, frame_rate=Fraction(25), time_base=MS, preset="ultrafast", tune="", gop=500
    )
    muxer = SegmentMuxer("fmp4", [encoder.template])
    assert muxer.init is not None and [t.timescale for t in read_tracks(muxer.init)] == [16000]
    packets: list[MediaPacket] = []
    rng = np.random.default_rng(0)
    for index in range(100):
        image = rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = 10_000 + index * 40, MS
        packets += encoder.encode(frame, keyframe=index in (0, 50))
    packets += encoder.encode(None)
    encoder.close()
    assert [p.pts for p in packets if p.keyframe] == [10_000, 12_000]
    segments = [muxer.mux([packets[:50]], 1), muxer.mux([packets[50:]], 2)]
    assert [decode_times(s) for s in segments] == [[160_000], [192_000]]
    container = av.open(io.BytesIO(muxer.init + b"".join(segments)))
    times = [round(float(f.pts * f.time_base) * 1000) for f in container.decode(video=0)]
    assert times == [10_000 + i * 40 for i in range(100)]
