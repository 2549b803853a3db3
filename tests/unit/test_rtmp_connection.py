"""ServerConnection driven by scripted client bytes; replies decoded as a client would."""

from __future__ import annotations

import pytest

from vilokanam.ingest.rtmp import (
    AudioData,
    ConnectionClosedByPeer,
    ConnectionState,
    ConnectRequested,
    Message,
    MessageType,
    MetaData,
    ProtocolError,
    PublishRequested,
    ServerConnection,
    Unpublished,
    UserControlEvent,
    VideoData,
    amf0,
)
from vilokanam.ingest.rtmp import messages as msg
from vilokanam.ingest.rtmp.messages import Command
from vilokanam.ingest.rtmp.testing import ClientScript, build_publish_session


class Peer:
    """A client script wired to a server connection."""

    def __init__(self, digest_scheme: int | None = None, **options: int) -> None:
        self.client = ClientScript(digest_scheme=digest_scheme)
        self.conn = ServerConnection(**options)

    def send(self, *parts: bytes) -> list[object]:
        return list(self.conn.receive_data(b"".join(parts)))

    def replies(self) -> list[Message]:
        return self.client.read_server(self.conn.data_to_send())

    def commands(self) -> list[Command]:
        return ClientScript.commands(self.replies())

    def connect(self) -> list[object]:
        return self.send(self.client.handshake(), self.client.connect("live"))

    def publish(self, name: str = "key") -> PublishRequested:
        self.connect()
        [event] = self.send(self.client.create_stream(), self.client.publish(name))
        assert isinstance(event, PublishRequested)
        self.conn.accept_publish(event.stream_id)
        self.replies()
        return event


def _user_controls(messages: list[Message]) -> list[tuple[int, int]]:
    return [
        (int.from_bytes(m.payload[:2], "big"), int.from_bytes(m.payload[2:6], "big"))
        for m in messages
        if m.type_id == MessageType.USER_CONTROL
    ]


@pytest.mark.parametrize("digest_scheme", [None, 0, 1])
def test_full_publish_session(digest_scheme: int | None) -> None:
    peer = Peer(digest_scheme, out_chunk_size=4096)
    client, conn = peer.client, peer.conn
    assert conn.state is ConnectionState.HANDSHAKE

    assert peer.send(client.c0c1()) == []
    assert peer.replies() == []  # S0 S1 S2 only
    assert len(client.server_handshake) == 1 + 2 * 1536
    assert conn.state is ConnectionState.HANDSHAKE
    assert peer.send(client.c2()) == []
    assert conn.state is ConnectionState.CONNECTING

    [connect] = peer.send(client.set_chunk_size(4096), client.connect("live", "rtmp://h/live"))
    assert connect == ConnectRequested("live", "rtmp://h/live", connect.properties)
    assert connect.properties["flashVer"].startswith("FMLE")
    assert conn.state is ConnectionState.CONNECTED
    assert (conn.app, conn.tc_url) == ("live", "rtmp://h/live")
    replies = peer.replies()
    assert [(m.type_id, m.payload) for m in replies[:3]] == [
        (MessageType.WINDOW_ACK_SIZE, (2_500_000).to_bytes(4, "big")),
        (MessageType.SET_PEER_BANDWIDTH, (2_500_000).to_bytes(4, "big") + b"\x02"),
        (MessageType.SET_CHUNK_SIZE, (4096).to_bytes(4, "big")),
    ]
    [result] = ClientScript.commands(replies)
    assert (result.name, result.transaction_id) == ("_result", 1.0)
    assert result.args[0]["code"] == "NetConnection.Connect.Success"
    assert result.args[0]["objectEncoding"] == 0.0
    assert client.reader.chunk_size == 4096  # the client reader followed Set Chunk Size

    assert peer.send(client.release_stream("key"), client.fc_publish("key")) == []
    assert [(c.name, c.transaction_id) for c in peer.commands()] == [
        ("_result", 2.0),
        ("onFCPublish", 0.0),
        ("_result", 3.0),
    ]
    assert peer.send(client.create_stream()) == []
    [created] = peer.commands()
    assert (created.name, created.transaction_id, created.args) == ("_result", 4.0, [1.0])

    [request] = peer.send(client.publish("key?token=abc"))
    assert request == PublishRequested(1, "key", "live", "live", "token=abc")
    assert peer.replies() == []  # nothing until the application decides
    conn.accept_publish(1)
    assert conn.state is ConnectionState.PUBLISHING
    replies = peer.replies()
    assert _user_controls(replies) == [(UserControlEvent.STREAM_BEGIN, 1)]
    [status] = ClientScript.commands(replies)
    assert status.name == "onStatus"
    assert status.args[0]["level"] == "status"
    assert status.args[0]["code"] == "NetStream.Publish.Start"
    assert [m.stream_id for m in replies if m.type_id == MessageType.COMMAND_AMF0] == [1]

    big_frame = bytes([0x17, 1]) + bytes(range(256)) * 40
    events = peer.send(
        client.set_data_frame({"width": 1280.0, "encoder": "obs"}),
        client.video(0, big_frame),
        client.audio(0, b"\xaf\x00\x12\x10"),
        client.video(33, b"\x27\x01zz"),
        client.audio(23, b"\xaf\x01aa"),
    )
    assert events == [
        MetaData(1, 0, {"width": 1280.0, "encoder": "obs"}),
        VideoData(1, 0, big_frame),
        AudioData(1, 0, b"\xaf\x00\x12\x10"),
        VideoData(1, 33, b"\x27\x01zz"),
        AudioData(1, 23, b"\xaf\x01aa"),
    ]

    assert peer.send(client.fc_unpublish("key"), client.delete_stream(1)) == [Unpublished(1)]
    assert conn.state is ConnectionState.CONNECTED
    assert peer.send(client.audio(50, b"\xaf\x01late")) == []
    assert peer.send(b"") == [ConnectionClosedByPeer()]
    assert conn.closed
    assert peer.send(b"more") == []


def test_publish_session_builder_round_trip() -> None:
    session = build_publish_session("abc", frames=10, video_size=9000, chunk_size=1000)
    conn = ServerConnection()
    *_, request = conn.receive_data(session.setup)
    assert isinstance(request, PublishRequested) and request.name == "abc"
    conn.accept_publish(request.stream_id)
    events = conn.receive_data(session.media)
    assert isinstance(events[0], MetaData)
    assert sum(isinstance(e, VideoData) for e in events) == 10
    assert sum(isinstance(e, AudioData) for e in events) == 10
    assert events[-1] == Unpublished(1)


def test_media_before_accept_is_ignored() -> None:
    peer = Peer()
    peer.connect()
    [request] = peer.send(
        peer.client.create_stream(),
        peer.client.publish("key"),
        peer.client.audio(0, b"\xaf\x00\x12\x10"),
        peer.client.set_data_frame({"a": 1.0}),
    )
    assert isinstance(request, PublishRequested)


def test_media_on_another_stream_is_ignored() -> None:
    peer = Peer()
    peer.publish()
    assert peer.send(peer.client.audio(0, b"\xaf\x01", stream_id=2)) == []
    assert peer.send(peer.client.audio(0, b"", stream_id=1)) == []  # empty placeholder


def test_bare_on_metadata_and_other_data_messages() -> None:
    peer = Peer()
    peer.publish()
    bare = msg.data("onMetaData", {"duration": 0.0}, stream_id=1, timestamp=5)
    other = msg.data("onTextData", {"text": "hi"}, stream_id=1)
    events = peer.send(peer.client.send(bare), peer.client.send(other))
    assert events == [MetaData(1, 5, {"duration": 0.0})]


def test_amf3_command_and_data_messages() -> None:
    peer = Peer()
    peer.send(peer.client.handshake())
    body = b"\x00" + amf0.encode_all(["connect", 1.0, {"app": "live"}])
    [event] = peer.send(peer.client.send(Message(MessageType.COMMAND_AMF3, body)))
    assert isinstance(event, ConnectRequested) and event.app == "live"


@pytest.mark.parametrize("command", ["FCUnpublish", "deleteStream", "closeStream"])
def test_each_unpublish_command(command: str) -> None:
    peer = Peer()
    peer.publish()
    client = peer.client
    build = {
        "FCUnpublish": lambda: client.fc_unpublish("key"),
        "deleteStream": lambda: client.delete_stream(1),
        "closeStream": lambda: client.command("closeStream", None, stream_id=1, txn=0),
    }[command]
    assert peer.send(build()) == [Unpublished(1)]
    assert peer.send(client.delete_stream(1)) == []  # only once


def test_withdrawn_publish_request_makes_accept_a_no_op() -> None:
    peer = Peer()
    peer.connect()
    client = peer.client
    events = peer.send(client.create_stream(), client.publish("key"), client.delete_stream(1))
    assert [type(e) for e in events] == [PublishRequested, Unpublished]
    peer.replies()
    peer.conn.accept_publish(1)
    assert peer.replies() == []
    assert peer.conn.state is ConnectionState.CONNECTED


def test_reject_publish() -> None:
    peer = Peer()
    peer.connect()
    [request] = peer.send(peer.client.create_stream(), peer.client.publish("nope"))
    peer.replies()
    peer.conn.reject_publish(request.stream_id, "unknown stream key")
    [status] = peer.commands()
    assert status.name == "onStatus"
    assert status.args[0] == {
        "level": "error",
        "code": "NetStream.Publish.BadName",
        "description": "unknown stream key",
    }
    assert peer.conn.closed and peer.conn.state is ConnectionState.CLOSED
    assert peer.send(peer.client.audio(0, b"\xaf\x01")) == []


def test_close_stream_from_the_server() -> None:
    peer = Peer()
    peer.publish()
    peer.conn.close_stream(1, "replaced by a newer connection")
    replies = peer.replies()
    assert _user_controls(replies) == [(UserControlEvent.STREAM_EOF, 1)]
    [status] = ClientScript.commands(replies)
    assert status.args[0]["code"] == "NetStream.Unpublish.Success"
    assert peer.conn.state is ConnectionState.CONNECTED
    assert peer.send(peer.client.audio(0, b"\xaf\x01")) == []


def test_ping_request_gets_a_response_and_server_pings() -> None:
    peer = Peer()
    peer.connect()
    peer.replies()
    assert peer.send(peer.client.ping_request(123456)) == []
    assert _user_controls(peer.replies()) == [(UserControlEvent.PING_RESPONSE, 123456)]
    peer.conn.send_ping(99)
    assert _user_controls(peer.replies()) == [(UserControlEvent.PING_REQUEST, 99)]
    pong = msg.user_control(UserControlEvent.PING_RESPONSE, 99)
    assert peer.send(peer.client.send(pong)) == []
    assert peer.replies() == []


def test_no_ping_before_the_handshake_completes() -> None:
    conn = ServerConnection()
    conn.send_ping()
    assert conn.data_to_send() == b""


def test_acknowledgement_after_each_window() -> None:
    """Sequence number = bytes received after the handshake, sent once per window."""
    peer = Peer()
    client = peer.client
    peer.send(client.handshake())
    parts = [client.connect(), client.window_ack_size(1000)]
    parts += [client.command("noop", None, "x" * 150, txn=0) for _ in range(12)]
    received, last_ack, expected, acks = 0, 0, [], []
    for part in parts:
        peer.send(part)
        received += len(part)
        if received - last_ack >= 1000:
            expected.append(received)
            last_ack = received
        acks += [
            int.from_bytes(m.payload, "big")
            for m in peer.replies()
            if m.type_id == MessageType.ACKNOWLEDGEMENT
        ]
    assert len(acks) >= 2 and acks == expected


def test_unknown_commands_do_not_kill_the_connection() -> None:
    peer = Peer()
    peer.connect()
    peer.replies()
    assert peer.send(peer.client.command("fancyThing", None, "x")) == []
    [error] = peer.commands()
    assert (error.name, error.args[0]["code"]) == ("_error", "NetConnection.Call.Failed")
    assert peer.send(peer.client.command("notify", None, txn=0)) == []
    assert peer.send(peer.client.command("_checkbw", None)) == []
    assert peer.send(peer.client.command("getStreamLength", None, "k")) == []
    assert [c.name for c in peer.commands()] == ["_result"]
    assert peer.conn.state is ConnectionState.CONNECTED


def test_play_is_refused_politely() -> None:
    peer = Peer()
    peer.connect()
    peer.replies()
    assert peer.send(peer.client.command("play", None, "k", stream_id=1, txn=0)) == []
    [status] = peer.commands()
    assert status.args[0]["code"] == "NetStream.Play.Failed"


def test_create_stream_ids_increase() -> None:
    peer = Peer()
    peer.connect()
    peer.replies()
    peer.send(peer.client.create_stream(), peer.client.create_stream())
    assert [c.args[0] for c in peer.commands()] == [1.0, 2.0]


def test_extended_timestamps_through_the_connection() -> None:
    start = 0xFFFFFF - 50
    session = build_publish_session("k", frames=5, start_timestamp=start, frame_interval=33)
    conn = ServerConnection()
    *_, request = conn.receive_data(session.setup)
    conn.accept_publish(request.stream_id)
    video = [e.timestamp for e in conn.receive_data(session.media) if isinstance(e, VideoData)]
    assert video == [start + i * 33 for i in range(5)]


def test_timestamps_are_raw_32_bit_values() -> None:
    peer = Peer()
    peer.publish()
    events = peer.send(
        peer.client.audio(0xFFFFFFF0, b"\xaf\x01"), peer.client.audio(0x10, b"\xaf\x01")
    )
    assert [e.timestamp for e in events] == [0xFFFFFFF0, 0x10]


@pytest.mark.parametrize(
    "script",
    [
        lambda c: c.handshake() + c.create_stream(),  # command before connect
        lambda c: c.handshake() + c.connect() + c.connect(),  # second connect
        lambda c: c.handshake() + c.connect() + c.command("publish", None, txn=0),  # no name
        lambda c: c.handshake() + c.connect() + c.publish("a") + c.publish("b"),
        lambda c: c.handshake() + c.send(Message(MessageType.COMMAND_AMF0, b"\x05")),
        lambda c: c.handshake() + c.send(Message(MessageType.USER_CONTROL, b"\x00", csid=2)),
        lambda c: c.handshake() + c.send(Message(MessageType.WINDOW_ACK_SIZE, b"\x01", csid=2)),
    ],
)
def test_protocol_errors(script) -> None:  # type: ignore[no-untyped-def]
    conn = ServerConnection()
    with pytest.raises(ProtocolError):
        conn.receive_data(script(ClientScript()))
    assert conn.closed


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        ServerConnection(out_chunk_size=0)
