"""The chunk stream: every header type, csid forms, extended timestamps, control, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vilokanam.ingest.rtmp import ChunkReader, ChunkWriter, Message, ProtocolError
from vilokanam.ingest.rtmp import messages as msg
from vilokanam.ingest.rtmp.chunks import EXTENDED_TIMESTAMP

AUDIO, VIDEO = 8, 9


def basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([fmt << 6 | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([fmt << 6 | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def chunk(
    fmt: int,
    csid: int,
    data: bytes = b"",
    *,
    ts: int = 0,
    length: int = 0,
    type_id: int = 0,
    stream_id: int = 0,
    ext: int | None = None,
) -> bytes:
    """One hand-assembled chunk; ``ext`` adds the 4-byte extended timestamp field."""
    out = basic(fmt, csid)
    if fmt <= 2:
        out += (EXTENDED_TIMESTAMP if ext is not None else ts).to_bytes(3, "big")
    if fmt <= 1:
        out += length.to_bytes(3, "big") + bytes([type_id])
    if fmt == 0:
        out += stream_id.to_bytes(4, "little")
    if ext is not None:
        out += ext.to_bytes(4, "big")
    return out + data


def feed(data: bytes, reader: ChunkReader | None = None) -> list[Message]:
    return (reader or ChunkReader()).feed(data)


def test_type0_full_header() -> None:
    [m] = feed(chunk(0, 4, b"abc", ts=1000, length=3, type_id=AUDIO, stream_id=1))
    assert m == Message(AUDIO, b"abc", 1000, 1, 4)


def test_type0_stream_id_is_little_endian() -> None:
    [m] = feed(chunk(0, 4, b"", ts=0, length=0, type_id=AUDIO, stream_id=0x01020304))
    assert m.stream_id == 0x01020304


def test_type1_type2_type3_inherit_from_previous_header() -> None:
    data = (
        chunk(0, 6, b"aaaa", ts=1000, length=4, type_id=VIDEO, stream_id=1)
        + chunk(1, 6, b"bb", ts=40, length=2, type_id=AUDIO)  # new length/type, delta 40
        + chunk(2, 6, b"cc", ts=20)  # same length/type, delta 20
        + chunk(3, 6, b"dd")  # new message: delta 20 again
        + chunk(3, 6, b"ee")  # and again
    )
    got = [(m.type_id, m.payload, m.timestamp, m.stream_id) for m in feed(data)]
    assert got == [
        (VIDEO, b"aaaa", 1000, 1),
        (AUDIO, b"bb", 1040, 1),
        (AUDIO, b"cc", 1060, 1),
        (AUDIO, b"dd", 1080, 1),
        (AUDIO, b"ee", 1100, 1),
    ]


def test_type3_after_type0_reuses_its_timestamp_as_delta() -> None:
    # Spec 5.3.1.2.4: the delta of a type-3 chunk following a type-0 one is that timestamp.
    data = chunk(0, 4, b"x", ts=100, length=1, type_id=AUDIO, stream_id=1) + chunk(3, 4, b"y")
    assert [m.timestamp for m in feed(data)] == [100, 200]


def test_type3_continuation_chunks_reassemble_one_message() -> None:
    payload = bytes(range(256)) + b"tail"
    data = (
        chunk(0, 6, payload[:128], ts=5, length=len(payload), type_id=VIDEO, stream_id=1)
        + chunk(3, 6, payload[128:256])
        + chunk(3, 6, payload[256:])
    )
    reader = ChunkReader()
    assert reader.feed(data[:-1]) == []
    [m] = reader.feed(data[-1:])
    assert (m.payload, m.timestamp) == (payload, 5)


def test_set_chunk_size_applies_to_following_chunks() -> None:
    big = bytes(300)
    data = (
        chunk(0, 6, big[:128], length=300, type_id=VIDEO, stream_id=1)
        + chunk(3, 6, big[128:256])
        + chunk(3, 6, big[256:])
        + chunk(0, 2, (4096).to_bytes(4, "big"), length=4, type_id=1)
        + chunk(3, 6, big)  # the next 300-byte message now fits one chunk
    )
    reader = ChunkReader()
    got = reader.feed(data)
    assert [m.type_id for m in got] == [VIDEO, 1, VIDEO]
    assert got[2].payload == big
    assert reader.chunk_size == 4096


def test_set_chunk_size_in_the_middle_of_a_message() -> None:
    payload = bytes(range(200)) * 2
    data = (
        chunk(0, 6, payload[:128], length=400, type_id=VIDEO, stream_id=1)
        + chunk(0, 2, (1000).to_bytes(4, "big"), length=4, type_id=1)
        + chunk(3, 6, payload[128:])  # the remaining 272 bytes in one chunk
    )
    got = feed(data)
    assert [m.type_id for m in got] == [1, VIDEO]
    assert got[1].payload == payload


def test_interleaved_chunk_streams() -> None:
    audio, video = b"A" * 200, b"V" * 300
    data = (
        chunk(0, 6, video[:128], ts=10, length=300, type_id=VIDEO, stream_id=1)
        + chunk(0, 4, audio[:128], ts=11, length=200, type_id=AUDIO, stream_id=1)
        + chunk(3, 6, video[128:256])
        + chunk(3, 4, audio[128:])
        + chunk(3, 6, video[256:])
    )
    got = feed(data)
    assert [(m.csid, m.type_id, m.payload, m.timestamp) for m in got] == [
        (4, AUDIO, audio, 11),
        (6, VIDEO, video, 10),
    ]


@pytest.mark.parametrize(
    ("csid", "header"),
    [
        (2, b"\x02"),
        (63, b"\x3f"),
        (64, b"\x00\x00"),
        (319, b"\x00\xff"),
        (320, b"\x01\x00\x01"),  # 64 + 0 + 1 * 256: little-endian
        (65599, b"\x01\xff\xff"),
    ],
)
def test_basic_header_forms(csid: int, header: bytes) -> None:
    assert basic(0, csid) == header
    [m] = feed(chunk(0, csid, b"z", length=1, type_id=AUDIO))
    assert m.csid == csid
    written = ChunkWriter().write(Message(AUDIO, b"z", csid=csid))
    assert written.startswith(header)
    assert feed(written) == [m]


def test_three_byte_csid_is_little_endian() -> None:
    [m] = feed(b"\x01\x34\x12" + chunk(0, 4, b"", length=0, type_id=AUDIO)[1:])
    assert m.csid == 64 + 0x34 + 0x12 * 256


def test_extended_timestamp_on_type0_and_type3_continuations() -> None:
    ts = 0x01234567
    payload = bytes(300)
    data = (
        chunk(0, 6, payload[:128], length=300, type_id=VIDEO, stream_id=1, ext=ts)
        + basic(3, 6)
        + ts.to_bytes(4, "big")
        + payload[128:256]
        + basic(3, 6)
        + ts.to_bytes(4, "big")
        + payload[256:]
    )
    [m] = feed(data)
    assert (m.timestamp, m.payload) == (ts, payload)


def test_extended_timestamp_on_type3_starting_a_new_message() -> None:
    ts = 0xFFFFFF + 10
    data = (
        chunk(0, 4, b"a", length=1, type_id=AUDIO, stream_id=1, ext=ts)
        + basic(3, 4)
        + ts.to_bytes(4, "big")  # repeats the field: here the type-0 timestamp used as delta
        + b"b"
    )
    got = feed(data)
    assert [(m.payload, m.timestamp) for m in got] == [(b"a", ts), (b"b", (2 * ts) & 0xFFFFFFFF)]


def test_extended_delta_on_type1_and_type3_new_message() -> None:
    delta = 0x1000000
    data = (
        chunk(0, 4, b"a", ts=7, length=1, type_id=AUDIO, stream_id=1)
        + chunk(1, 4, b"bb", length=2, type_id=AUDIO, ext=delta)
        + basic(3, 4)
        + delta.to_bytes(4, "big")
        + b"cc"
    )
    assert [m.timestamp for m in feed(data)] == [7, 7 + delta, 7 + 2 * delta]


def test_type3_continuation_without_the_extended_field_is_tolerated() -> None:
    # rtmpdump-era writers omit the field on continuations; the value does not match.
    ts = 0x02000000
    payload = bytes(range(1, 200))
    data = chunk(0, 6, payload[:128], length=len(payload), type_id=VIDEO, ext=ts)
    data += basic(3, 6) + payload[128:]
    [m] = feed(data)
    assert (m.timestamp, m.payload) == (ts, payload)


def test_timestamps_wrap_at_32_bits() -> None:
    data = chunk(0, 4, b"a", length=1, type_id=AUDIO, ext=0xFFFFFFF0) + chunk(2, 4, b"b", ts=0x20)
    assert [m.timestamp for m in feed(data)] == [0xFFFFFFF0, 0x10]


def test_abort_discards_the_partial_message() -> None:
    data = (
        chunk(0, 6, bytes(128), length=300, type_id=VIDEO, stream_id=1)
        + chunk(0, 2, (6).to_bytes(4, "big"), length=4, type_id=2)
        + chunk(0, 6, b"fresh", length=5, type_id=VIDEO, stream_id=1)
    )
    got = feed(data)
    assert [(m.type_id, m.payload) for m in got] == [(2, b"\x00\x00\x00\x06"), (VIDEO, b"fresh")]


def test_librtmp_may_open_a_chunk_stream_with_a_type1_header() -> None:
    [m] = feed(chunk(1, 2, b"\x00\x00\x10\x00", ts=0, length=4, type_id=5))
    assert (m.type_id, m.stream_id, m.timestamp) == (5, 0, 0)


def test_zero_length_message() -> None:
    [m] = feed(chunk(0, 4, length=0, type_id=AUDIO, stream_id=1))
    assert m.payload == b""


@pytest.mark.parametrize("size", [0, 0x80000000, 0xFFFFFFFF])
def test_invalid_set_chunk_size(size: int) -> None:
    with pytest.raises(ProtocolError):
        feed(chunk(0, 2, size.to_bytes(4, "big"), length=4, type_id=1))


def test_chunk_size_of_one_is_valid() -> None:
    data = chunk(0, 2, (1).to_bytes(4, "big"), length=4, type_id=1)
    data += chunk(0, 4, b"a", length=3, type_id=AUDIO) + chunk(3, 4, b"b") + chunk(3, 4, b"c")
    assert feed(data)[1].payload == b"abc"


def test_short_set_chunk_size_payload() -> None:
    with pytest.raises(ProtocolError):
        feed(chunk(0, 2, b"\x00\x10", length=2, type_id=1))


def test_message_length_limit() -> None:
    reader = ChunkReader(max_message_size=1000)
    with pytest.raises(ProtocolError, match="limit"):
        reader.feed(chunk(0, 4, length=1001, type_id=VIDEO))


def test_pending_bytes_limit() -> None:
    reader = ChunkReader(max_pending_bytes=300)
    data = b"".join(chunk(0, c, bytes(128), length=1000, type_id=VIDEO) for c in (4, 5, 6))
    with pytest.raises(ProtocolError, match="partial"):
        reader.feed(data)


def test_new_header_inside_a_message_is_an_error() -> None:
    data = chunk(0, 6, bytes(128), length=300, type_id=VIDEO) + chunk(1, 6, b"", length=0)
    with pytest.raises(ProtocolError):
        feed(data)


# ----------------------------------------------------------------------------- writer


def _first_fmts(data: bytes, chunk_size: int = 128) -> list[int]:
    """Header type of the first chunk of each message (all single-chunk, csid < 64)."""
    fmts, pos = [], 0
    reader_sizes = {0: 11, 1: 7, 2: 3, 3: 0}
    length = 0
    while pos < len(data):
        fmt = data[pos] >> 6
        fmts.append(fmt)
        if fmt <= 1:
            length = int.from_bytes(data[pos + 4 : pos + 7], "big")
        pos += 1 + reader_sizes[fmt] + min(length, chunk_size)
    return fmts


def test_writer_header_compression() -> None:
    writer = ChunkWriter()
    out = b"".join(
        writer.write(m)
        for m in [
            Message(AUDIO, b"aa", 0, 1, 4),  # first on the csid: type 0
            Message(AUDIO, b"bb", 20, 1, 4),  # same length/type, new delta: type 2
            Message(AUDIO, b"cc", 40, 1, 4),  # same delta: type 3
            Message(AUDIO, b"ddd", 60, 1, 4),  # new length: type 1
            Message(AUDIO, b"eee", 50, 1, 4),  # timestamp goes back: type 0
            Message(AUDIO, b"fff", 50, 2, 4),  # other message stream: type 0
        ]
    )
    assert _first_fmts(out) == [0, 2, 3, 1, 0, 0]
    assert [m.timestamp for m in feed(out)] == [0, 20, 40, 60, 50, 50]


def test_writer_without_compression_uses_type0() -> None:
    writer = ChunkWriter(compress=False)
    out = writer.write(Message(AUDIO, b"a", 0, 1, 4)) + writer.write(Message(AUDIO, b"b", 0, 1, 4))
    assert _first_fmts(out) == [0, 0]


def test_writer_extended_timestamp_on_every_chunk() -> None:
    ts = 0x12345678
    writer = ChunkWriter(chunk_size=100)
    out = writer.write(Message(VIDEO, bytes(250), ts, 1, 6))
    field = ts.to_bytes(4, "big")
    assert out[1:4] == b"\xff\xff\xff" and out[12:16] == field
    assert out[116:121] == basic(3, 6) + field
    assert out[221:226] == basic(3, 6) + field
    reader = ChunkReader(chunk_size=100)
    assert reader.feed(out) == [Message(VIDEO, bytes(250), ts, 1, 6)]


def test_writer_applies_its_own_set_chunk_size() -> None:
    writer = ChunkWriter()
    writer.write(msg.set_chunk_size(4096))
    assert writer.chunk_size == 4096
    with pytest.raises(ValueError):
        writer.write(msg.set_chunk_size(0))
    with pytest.raises(ValueError):
        ChunkWriter(chunk_size=0)
    with pytest.raises(ValueError):
        writer.write(Message(AUDIO, b"", csid=1))


_messages = st.lists(
    st.builds(
        Message,
        type_id=st.sampled_from([AUDIO, VIDEO, 18, 20]),
        payload=st.binary(max_size=700),
        timestamp=st.integers(min_value=0, max_value=0xFFFFFFFF)
        | st.integers(min_value=0xFFFFF0, max_value=0x1000010),
        stream_id=st.integers(min_value=0, max_value=3),
        csid=st.sampled_from([3, 4, 63, 64, 319, 320, 65599]),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(_messages, st.integers(min_value=1, max_value=600), st.data())
def test_writer_reader_round_trip_any_split(
    messages: list[Message], chunk_size: int, data: st.DataObject
) -> None:
    writer = ChunkWriter()
    stream = writer.write(msg.set_chunk_size(chunk_size))
    stream += b"".join(writer.write(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = ChunkReader()
    got: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += reader.feed(stream[start:end])
    assert got[1:] == messages
