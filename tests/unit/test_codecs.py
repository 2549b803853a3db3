"""RFC 6381 CODECS strings from real encoder output and from hand-made configurations."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import pytest
from av.codec.context import Flags

from vilokanam.packager.codecs import (
    CodecConfigError,
    aac_codec_string,
    aac_object_type,
    avc_codec_string,
    avc_codec_string_from_sps,
    join_codecs,
)
from vilokanam.packager.nal import (
    annexb_to_length_prefixed,
    remove_emulation_prevention,
    split_annexb,
)


def x264_configs(profile: str | None, width: int = 640, height: int = 360) -> tuple[bytes, bytes]:
    """libx264's configuration as it writes it (Annex B SPS/PPS) and as the FLV muxer stores
    it (an avcC record): one frame encoded into FLV, read back with the demuxer."""
    buffer = io.BytesIO()
    output = av.open(buffer, "w", format="flv")
    stream = output.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = Fraction(1, 25)
    stream.options = {"preset": "veryfast", **({"profile": profile} if profile else {})}
    frame = av.VideoFrame(width, height, "yuv420p")
    frame.pts = 0
    for data in (frame, None):
        output.mux(stream.encode(data))
    annexb = stream.codec_context.extradata
    output.close()
    container = av.open(io.BytesIO(buffer.getvalue()), format="flv")
    avcc = container.streams.video[0].codec_context.extradata
    container.close()
    assert annexb and avcc and annexb[0] == 0 and avcc[0] == 1
    return annexb, avcc


@pytest.mark.parametrize(
    ("profile", "prefix"),
    [("baseline", "avc1.42c0"), ("main", "avc1.4d40"), ("high", "avc1.6400")],
)
def test_x264_profiles(profile: str, prefix: str) -> None:
    annexb, avcc = x264_configs(profile)
    codecs = avc_codec_string(annexb)
    assert codecs == prefix + "1e", "640x360 at 25 fps: x264 picks level 3.0"
    assert avc_codec_string(avcc) == codecs, "avcC and Annex B agree"


def test_level_follows_the_frame_size() -> None:
    assert avc_codec_string(x264_configs(None, 1920, 1080)[1]) == "avc1.640028"  # High 4.0


def test_aac_from_the_encoder() -> None:
    context = av.CodecContext.create("aac", "w")
    context.sample_rate, context.layout, context.format = 44100, "stereo", "fltp"
    context.flags |= int(Flags.global_header)
    context.open()
    assert aac_codec_string(context.extradata or b"") == "mp4a.40.2"


def test_hand_made_configurations() -> None:
    # avcC: version 1, High (100), constraints 0, level 3.1
    assert avc_codec_string(bytes([1, 100, 0, 31, 0xFF, 0xE1])) == "avc1.64001f"
    # Annex B, 3-byte start codes, Constrained Baseline 3.0
    sps = bytes([0x67, 0x42, 0xC0, 0x1E, 0xDA, 0x02])
    assert avc_codec_string(b"\x00\x00\x01" + sps + b"\x00\x00\x01\x68\xce") == "avc1.42c01e"
    assert avc_codec_string_from_sps(sps) == "avc1.42c01e"
    # An emulation-prevention byte inside the first bytes of the SPS
    assert avc_codec_string_from_sps(bytes([0x67, 0x64, 0x00, 0x00, 0x03, 0x28])) == "avc1.640000"
    assert aac_codec_string(bytes([0x12, 0x10])) == "mp4a.40.2"  # AAC-LC 44.1 kHz stereo
    assert aac_codec_string(bytes([0x2B, 0x92, 0x08, 0x00])) == "mp4a.40.5"  # HE-AAC
    assert aac_codec_string(bytes([0xEB, 0x09, 0x88, 0x00])) == "mp4a.40.29"  # HE-AACv2
    assert aac_object_type(bytes([0xF9, 0x40])) == 42, "escaped object type (USAC)"
    assert join_codecs("avc1.64001f", None, "mp4a.40.2") == "avc1.64001f,mp4a.40.2"


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00\x00\x01\x68\xce\x3c\x80", bytes([1, 0, 0, 0]), b"\x00\x00\x01\x67\x64"],
)
def test_unusable_h264_configurations(bad: bytes) -> None:
    with pytest.raises(CodecConfigError):
        avc_codec_string(bad)


@pytest.mark.parametrize("bad", [b"", bytes([0x00, 0x10]), bytes([0xF8])])
def test_unusable_aac_configurations(bad: bytes) -> None:
    with pytest.raises(CodecConfigError):
        aac_codec_string(bad)


def test_nal_framing() -> None:
    stream = b"\x00\x00\x00\x01\x67\x01\x02\x00\x00\x01\x68\x03\x00\x00\x01\x65\x00\x00\x03\x01"
    units = split_annexb(stream)
    assert units == [b"\x67\x01\x02", b"\x68\x03", b"\x65\x00\x00\x03\x01"]
    assert remove_emulation_prevention(units[2]) == b"\x65\x00\x00\x01"
    assert annexb_to_length_prefixed(stream) == (
        b"\x00\x00\x00\x03\x67\x01\x02\x00\x00\x00\x02\x68\x03\x00\x00\x00\x05\x65\x00\x00\x03\x01"
    )
