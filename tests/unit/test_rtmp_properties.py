"""Property tests of ServerConnection: input splitting is invisible, bad input is contained."""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vilokanam.ingest.rtmp import ProtocolError, PublishRequested, ServerConnection
from vilokanam.ingest.rtmp.testing import ClientScript, PublishSession, build_publish_session

HANDSHAKE_SIZE = 1 + 2 * 1536
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seeded(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return rng.randbytes


def _session(scheme: int | None, chunk_size: int, start_timestamp: int) -> PublishSession:
    script = ClientScript(digest_scheme=scheme, random_bytes=_seeded(1))
    return build_publish_session(
        "key?x=1",
        frames=4,
        video_size=700,
        chunk_size=chunk_size,
        start_timestamp=start_timestamp,
        script=script,
    )


def _feed(conn: ServerConnection, data: bytes, cuts: list[int]) -> list[object]:
    """Feed ``data`` cut at ``cuts``, accepting a publish as soon as it is requested."""
    events: list[object] = []
    for start, end in itertools.pairwise([0, *sorted(cuts), len(data)]):
        if start < end:
            new = conn.receive_data(data[start:end])
            for event in new:
                if isinstance(event, PublishRequested):
                    conn.accept_publish(event.stream_id)
            events += new
    return events


def _cuts(data: st.DataObject, size: int) -> list[int]:
    return data.draw(st.lists(st.integers(0, size), max_size=20), label="cuts")


@FAST
@given(
    scheme=st.sampled_from([None, 0, 1]),
    chunk_size=st.sampled_from([128, 500, 4096]),
    start_timestamp=st.sampled_from([0, 0xFFFFFF - 60, 0xFFFFFFFF - 60]),
    data=st.data(),
)
def test_any_split_yields_the_same_events_and_replies(
    scheme: int | None, chunk_size: int, start_timestamp: int, data: st.DataObject
) -> None:
    session = _session(scheme, chunk_size, start_timestamp)
    whole = ServerConnection(random_bytes=_seeded(2))
    split = ServerConnection(random_bytes=_seeded(2))
    for part in (session.setup, session.media):
        expected = _feed(whole, part, [])
        assert _feed(split, part, _cuts(data, len(part))) == expected
        assert split.data_to_send() == whole.data_to_send()
    assert len(expected) == 1 + 2 * session.frames + 1  # metadata, media, Unpublished


def _contained(conn: ServerConnection, data: bytes, cuts: list[int]) -> None:
    try:
        _feed(conn, data, cuts)
        conn.receive_data(b"")
    except ProtocolError:
        assert conn.closed


@FAST
@given(st.binary(max_size=4000), st.data())
def test_random_bytes_only_raise_protocol_error(garbage: bytes, data: st.DataObject) -> None:
    _contained(ServerConnection(), garbage, _cuts(data, len(garbage)))


@FAST
@given(st.binary(min_size=1, max_size=3000), st.data())
def test_random_bytes_after_a_valid_start(garbage: bytes, data: st.DataObject) -> None:
    session = _session(None, 128, 0)
    stream = session.setup + garbage
    _contained(ServerConnection(), stream, _cuts(data, len(stream)))


_mutation = st.tuples(
    st.sampled_from(["replace", "insert", "delete"]),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from([None, 0]),
    chunk_size=st.sampled_from([128, 4096]),
    mutations=st.lists(_mutation, min_size=1, max_size=6),
    data=st.data(),
)
def test_mutated_streams_only_raise_protocol_error(
    scheme: int | None,
    chunk_size: int,
    mutations: list[tuple[str, int, int]],
    data: st.DataObject,
) -> None:
    session = _session(scheme, chunk_size, 0xFFFFFF - 60)
    stream = bytearray(session.setup + session.media)
    for operation, position, value in mutations:
        # Mostly past the handshake, where the chunk parser and AMF decoder live.
        index = HANDSHAKE_SIZE + position % (len(stream) - HANDSHAKE_SIZE)
        if operation == "replace":
            stream[index] = value
        elif operation == "insert":
            stream.insert(index, value)
        else:
            del stream[index]
    _contained(ServerConnection(), bytes(stream), _cuts(data, len(stream)))
