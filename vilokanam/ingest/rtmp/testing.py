"""Client-side byte builders for tests and harnesses: what a publisher such as OBS sends.

:class:`ClientScript` keeps a client's outbound chunk-stream state (chunk size, header
compression) so consecutive calls produce one valid byte stream; it also decodes what the
server sends back. :func:`build_publish_session` scripts a whole publish.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vilokanam.ingest.rtmp import amf0
from vilokanam.ingest.rtmp import messages as msg
from vilokanam.ingest.rtmp.chunks import ChunkReader, ChunkWriter
from vilokanam.ingest.rtmp.handshake import PACKET_SIZE, RTMP_VERSION, RandomBytes, build_c1
from vilokanam.ingest.rtmp.messages import Command, Message, MessageType, UserControlEvent

SERVER_HANDSHAKE_SIZE = 1 + 2 * PACKET_SIZE


class ClientScript:
    """Builds a publishing client's bytes call by call, and reads the server's replies."""

    def __init__(
        self,
        *,
        digest_scheme: int | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.c1 = build_c1(digest_scheme, random_bytes)
        self.writer = ChunkWriter()
        self.reader = ChunkReader()
        self._random_bytes = random_bytes
        self._transaction_id = 0
        self._handshake_left = SERVER_HANDSHAKE_SIZE
        self.server_handshake = bytearray()

    # ------------------------------------------------------------------ handshake

    def c0c1(self) -> bytes:
        return bytes((RTMP_VERSION,)) + self.c1

    def c2(self) -> bytes:
        """C2 should echo S1, but the server does not check it; echo it once it was read."""
        if len(self.server_handshake) >= 1 + PACKET_SIZE:
            return bytes(self.server_handshake[1 : 1 + PACKET_SIZE])
        return self._random_bytes(PACKET_SIZE)

    def handshake(self) -> bytes:
        return self.c0c1() + self.c2()

    # ------------------------------------------------------------------ messages

    def send(self, message: Message) -> bytes:
        return self.writer.write(message)

    def command(self, name: str, *args: Any, stream_id: int = 0, txn: float | None = None) -> bytes:
        """A command with the next transaction id (pass ``txn=0`` for notifications)."""
        if txn is None:
            self._transaction_id += 1
            txn = self._transaction_id
        return self.send(msg.command(name, txn, *args, stream_id=stream_id))

    def connect(self, app: str = "live", tc_url: str | None = None, **extra: Any) -> bytes:
        properties = {
            "app": app,
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)",
            "tcUrl": tc_url if tc_url is not None else f"rtmp://localhost:1935/{app}",
            **extra,
        }
        return self.command("connect", properties)

    def set_chunk_size(self, size: int) -> bytes:
        return self.send(msg.set_chunk_size(size))

    def window_ack_size(self, size: int) -> bytes:
        return self.send(msg.window_ack_size(size))

    def ping_request(self, timestamp: int) -> bytes:
        return self.send(msg.user_control(UserControlEvent.PING_REQUEST, timestamp))

    def release_stream(self, name: str) -> bytes:
        return self.command("releaseStream", None, name)

    def fc_publish(self, name: str) -> bytes:
        return self.command("FCPublish", None, name)

    def create_stream(self) -> bytes:
        return self.command("createStream", None)

    def publish(self, name: str, stream_id: int = 1, publish_type: str = "live") -> bytes:
        return self.command("publish", None, name, publish_type, stream_id=stream_id, txn=0)

    def set_data_frame(
        self, metadata: Mapping[str, Any], stream_id: int = 1, timestamp: int = 0
    ) -> bytes:
        values = ("@setDataFrame", "onMetaData", amf0.EcmaArray(metadata))
        return self.send(msg.data(*values, stream_id=stream_id, timestamp=timestamp))

    def audio(self, timestamp: int, payload: bytes, stream_id: int = 1) -> bytes:
        message = Message(MessageType.AUDIO, payload, timestamp, stream_id, msg.CSID_AUDIO)
        return self.send(message)

    def video(self, timestamp: int, payload: bytes, stream_id: int = 1) -> bytes:
        message = Message(MessageType.VIDEO, payload, timestamp, stream_id, msg.CSID_VIDEO)
        return self.send(message)

    def fc_unpublish(self, name: str) -> bytes:
        return self.command("FCUnpublish", None, name)

    def delete_stream(self, stream_id: int = 1) -> bytes:
        return self.command("deleteStream", None, float(stream_id), txn=0)

    # ------------------------------------------------------------------ server replies

    def read_server(self, data: bytes) -> list[Message]:
        """Messages completed by server bytes (the S0 S1 S2 prefix is skipped and kept)."""
        if self._handshake_left:
            taken = data[: self._handshake_left]
            self.server_handshake += taken
            self._handshake_left -= len(taken)
            data = data[len(taken) :]
        return self.reader.feed(data)

    @staticmethod
    def commands(messages: Iterable[Message]) -> list[Command]:
        """The command messages among ``messages``, decoded."""
        command_types = (MessageType.COMMAND_AMF0, MessageType.COMMAND_AMF3)
        return [msg.decode_command(m) for m in messages if m.type_id in command_types]


@dataclass(frozen=True)
class PublishSession:
    """A scripted publish in two parts, split where a real client waits for Publish.Start."""

    setup: bytes
    """Handshake through ``publish``."""
    media: bytes
    """Metadata, audio/video, then FCUnpublish + deleteStream when requested."""
    frames: int
    """How many audio and how many video messages ``media`` carries."""


def fake_video(index: int, size: int) -> bytes:
    """An FLV video tag body: AVC sequence header first, then key/inter NAL-unit frames."""
    if index == 0:
        return b"\x17\x00\x00\x00\x00" + bytes((1, 0x64, 0, 0x1F, 0xFF))
    header = b"\x17\x01\x00\x00\x00" if index % 30 == 1 else b"\x27\x01\x00\x00\x00"
    return header + bytes((index + i) & 0xFF for i in range(size))


def fake_audio(index: int, size: int = 24) -> bytes:
    """An FLV AAC tag body: AudioSpecificConfig first, then raw frames."""
    if index == 0:
        return b"\xaf\x00\x12\x10"
    return b"\xaf\x01" + bytes((index * 7 + i) & 0xFF for i in range(size))


def build_publish_session(
    stream_key: str,
    *,
    app: str = "live",
    chunk_size: int = 4096,
    frames: int = 30,
    video_size: int = 6000,
    start_timestamp: int = 0,
    frame_interval: int = 33,
    digest_scheme: int | None = None,
    unpublish: bool = True,
    script: ClientScript | None = None,
) -> PublishSession:
    """The bytes an OBS-like publisher sends, as :class:`PublishSession` parts."""
    client = script or ClientScript(digest_scheme=digest_scheme)
    setup = b"".join(
        (
            client.handshake(),
            client.set_chunk_size(chunk_size),
            client.connect(app),
            client.release_stream(stream_key),
            client.fc_publish(stream_key),
            client.create_stream(),
            client.publish(stream_key),
        )
    )
    metadata = {"width": 1280.0, "height": 720.0, "framerate": 30.0, "videocodecid": 7.0}
    parts = [client.set_data_frame(metadata, timestamp=start_timestamp)]
    for index in range(frames):
        timestamp = start_timestamp + index * frame_interval
        parts.append(client.video(timestamp, fake_video(index, video_size + index * 17)))
        parts.append(client.audio(timestamp, fake_audio(index)))
    if unpublish:
        parts += (client.fc_unpublish(stream_key), client.delete_stream())
    return PublishSession(setup, b"".join(parts), frames)
