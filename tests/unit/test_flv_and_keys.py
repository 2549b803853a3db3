"""FLV framing for the worker pipe, and stream-key handling."""

from __future__ import annotations

import io

import av
from hypothesis import given
from hypothesis import strategies as st

from vilokanam.ingest import flv
from vilokanam.store.keys import hash_stream_key, key_matches, new_stream_key, valid_slug


@given(st.integers(min_value=0, max_value=0xFFFFFFFF), st.binary(max_size=300))
def test_tag_layout(timestamp: int, body: bytes) -> None:
    data = flv.tag(flv.TAG_VIDEO, timestamp, body)
    assert data[0] == flv.TAG_VIDEO
    assert int.from_bytes(data[1:4], "big") == len(body)
    assert int.from_bytes(data[4:7], "big") | (data[7] << 24) == timestamp
    assert data[11 : 11 + len(body)] == body
    assert int.from_bytes(data[-4:], "big") == 11 + len(body)


def test_libavformat_reads_what_we_frame() -> None:
    """A tiny FLV assembled by us opens in libav with the AAC config and packets intact."""
    aac_config = bytes([0xAF, 0x00, 0x12, 0x10])  # AAC-LC 44.1 kHz stereo
    frames = [bytes([0xAF, 0x01]) + bytes(20) for _ in range(5)]
    data = flv.file_header(has_audio=True, has_video=False)
    data += flv.tag(flv.TAG_AUDIO, 0, aac_config)
    data += b"".join(flv.tag(flv.TAG_AUDIO, 23 * i, f) for i, f in enumerate(frames))
    container = av.open(io.BytesIO(data), format="flv")
    stream = container.streams.audio[0]
    assert stream.codec_context.name == "aac"
    assert [p.pts for p in container.demux(stream) if p.size] == [0, 23, 46, 69, 92]


def test_sequence_header_and_keyframe_detection() -> None:
    assert flv.is_sequence_header(flv.TAG_VIDEO, bytes([0x17, 0x00, 0, 0, 0]))
    assert not flv.is_sequence_header(flv.TAG_VIDEO, bytes([0x17, 0x01, 0, 0, 0]))
    assert flv.is_sequence_header(flv.TAG_AUDIO, bytes([0xAF, 0x00, 0x12, 0x10]))
    assert not flv.is_sequence_header(flv.TAG_AUDIO, bytes([0x2F, 0x00]))  # MP3 has none
    assert flv.is_keyframe(bytes([0x17, 0x01])) and not flv.is_keyframe(bytes([0x27, 0x01]))


def test_keys_are_random_hashed_and_compared() -> None:
    keys = {new_stream_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) >= 32 for k in keys)
    key = keys.pop()
    stored = hash_stream_key(key)
    assert key not in stored and key_matches(key, stored)
    assert not key_matches(key + "x", stored)


def test_slug_rule() -> None:
    assert valid_slug("demo") and valid_slug("a1-b2")
    assert not valid_slug("Demo") and not valid_slug("-x") and not valid_slug("a")
    assert not valid_slug("a" * 64) and not valid_slug("../etc")
    assert not valid_slug("abc\n"), "a trailing newline is not part of a slug ($ would allow it)"
