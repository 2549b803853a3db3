"""The server side of one RTMP connection as a sans-I/O state machine.

Bytes go in through :meth:`ServerConnection.receive_data`, events come out; everything the
server must send (handshake, replies, acknowledgements, pings) accumulates until
:meth:`ServerConnection.data_to_send`. No sockets, clocks or threads: the asyncio shell owns
those, which keeps every protocol decision testable with plain byte strings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import Enum
from typing import Any

from vilokanam.ingest.rtmp import messages as msg
from vilokanam.ingest.rtmp.amf0 import UNDEFINED
from vilokanam.ingest.rtmp.chunks import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ChunkReader,
    ChunkWriter,
    validate_chunk_size,
)
from vilokanam.ingest.rtmp.errors import ProtocolError
from vilokanam.ingest.rtmp.events import (
    AudioData,
    ConnectionClosedByPeer,
    ConnectRequested,
    Event,
    MetaData,
    PublishRequested,
    Unpublished,
    VideoData,
)
from vilokanam.ingest.rtmp.handshake import RandomBytes, ServerHandshake
from vilokanam.ingest.rtmp.messages import Command, Message, MessageType, UserControlEvent

_IGNORED_COMMANDS = frozenset({"_result", "_error", "onStatus", "onBWDone", "_checkbw"})
"""Replies and notifications from the client: answering them would only confuse it."""


class ConnectionState(Enum):
    HANDSHAKE = "handshake"
    CONNECTING = "connecting"  # handshake done, waiting for ``connect``
    CONNECTED = "connected"
    PUBLISHING = "publishing"
    CLOSED = "closed"


class ServerConnection:
    """One publisher connection: handshake, ``connect``, stream setup, media."""

    def __init__(
        self,
        out_chunk_size: int = 4096,
        window_ack_size: int = 2_500_000,
        peer_bandwidth: int = 2_500_000,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.out_chunk_size = validate_chunk_size(out_chunk_size, ValueError)
        self.window_ack_size = window_ack_size
        self.peer_bandwidth = peer_bandwidth
        self.state = ConnectionState.HANDSHAKE
        self.app: str | None = None
        self.tc_url: str | None = None
        self._handshake = ServerHandshake(random_bytes)
        self._reader = ChunkReader(max_message_size=max_message_size)
        self._writer = ChunkWriter()
        self._out = bytearray()
        self._next_stream_id = 1
        self._publish_stream_id: int | None = None  # requested or accepted
        self._publish_accepted = False
        self._publish_name = ""
        self._peer_window = 0
        self._bytes_received = 0
        self._bytes_acked = 0
        self._commands: dict[str, Callable[[Command, Message, list[Event]], None]] = {
            "connect": self._on_connect,
            "releaseStream": self._on_release_stream,
            "FCPublish": self._on_fc_publish,
            "createStream": self._on_create_stream,
            "publish": self._on_publish,
            "FCUnpublish": self._on_fc_unpublish,
            "closeStream": self._on_close_stream,
            "deleteStream": self._on_delete_stream,
            "getStreamLength": self._on_get_stream_length,
            "play": self._on_play,
        }

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    # ------------------------------------------------------------------ application API

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the socket (``b""`` at EOF); return the events they complete."""
        if self.closed:
            return []
        if not data:
            self.state = ConnectionState.CLOSED
            return [ConnectionClosedByPeer()]
        try:
            return self._receive(bytes(data))
        except ProtocolError:
            self.state = ConnectionState.CLOSED
            raise

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def accept_publish(self, stream_id: int) -> None:
        """Start the publish: StreamBegin, then ``onStatus NetStream.Publish.Start``.

        A no-op when the client already withdrew the request (the events of one
        ``receive_data`` call can contain both the request and its withdrawal).
        """
        if self.closed or stream_id != self._publish_stream_id or self._publish_accepted:
            return
        self._publish_accepted = True
        self.state = ConnectionState.PUBLISHING
        self._send(msg.user_control(UserControlEvent.STREAM_BEGIN, stream_id))
        description = f"{self._publish_name} is now published."
        self._send_status(stream_id, "status", "NetStream.Publish.Start", description)

    def reject_publish(self, stream_id: int, description: str) -> None:
        """Refuse with ``NetStream.Publish.BadName``; the connection is finished after this."""
        if self.closed:
            return
        self._send_status(stream_id, "error", "NetStream.Publish.BadName", description)
        self._clear_publish()
        self.state = ConnectionState.CLOSED

    def close_stream(self, stream_id: int, description: str) -> None:
        """End a publish from the server side (a kick): StreamEOF + ``Unpublish.Success``."""
        if self.closed or self.state is ConnectionState.HANDSHAKE:
            return
        self._send(msg.user_control(UserControlEvent.STREAM_EOF, stream_id))
        self._send_status(stream_id, "status", "NetStream.Unpublish.Success", description)
        if stream_id == self._publish_stream_id:
            self._clear_publish()

    def send_ping(self, timestamp: int = 0) -> None:
        """Queue a PingRequest; the client answers with a PingResponse (keepalive)."""
        if self.state in (ConnectionState.HANDSHAKE, ConnectionState.CLOSED):
            return
        self._send(msg.user_control(UserControlEvent.PING_REQUEST, timestamp))

    # ------------------------------------------------------------------ input

    def _receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.state is ConnectionState.HANDSHAKE:
            data = self._handshake.receive_data(data)
            self._out += self._handshake.data_to_send()
            if not self._handshake.complete:
                return events
            self.state = ConnectionState.CONNECTING
            if not data:
                return events
        # Acknowledgement sequence numbers count chunk-stream bytes, i.e. after the handshake.
        self._bytes_received += len(data)
        for message in self._reader.feed(data):
            self._on_message(message, events)
        if self._peer_window and self._bytes_received - self._bytes_acked >= self._peer_window:
            self._send(msg.acknowledgement(self._bytes_received))
            self._bytes_acked = self._bytes_received
        return events

    def _on_message(self, message: Message, events: list[Event]) -> None:
        type_id = message.type_id
        if type_id in (MessageType.AUDIO, MessageType.VIDEO):
            self._on_media(message, events)
        elif type_id in (MessageType.COMMAND_AMF0, MessageType.COMMAND_AMF3):
            self._on_command(msg.decode_command(message), message, events)
        elif type_id in (MessageType.DATA_AMF0, MessageType.DATA_AMF3):
            self._on_data(message, events)
        elif type_id == MessageType.USER_CONTROL:
            event_type, event_data = msg.read_user_control(message)
            if event_type == UserControlEvent.PING_REQUEST:
                if len(event_data) < 4:
                    raise ProtocolError("ping request without its 4-byte timestamp")
                value = int.from_bytes(event_data[:4], "big")
                self._send(msg.user_control(UserControlEvent.PING_RESPONSE, value))
        elif type_id == MessageType.WINDOW_ACK_SIZE:
            self._peer_window = msg.read_u32(message)
        # Set Chunk Size and Abort were applied by the chunk reader; Acknowledgement, Set Peer
        # Bandwidth, shared objects and aggregates mean nothing to an ingest server.

    def _is_publishing(self, stream_id: int) -> bool:
        return self._publish_accepted and stream_id == self._publish_stream_id

    def _on_media(self, message: Message, events: list[Event]) -> None:
        # Empty media messages carry no FLV tag header; librtmp sends them as placeholders.
        if not self._is_publishing(message.stream_id) or not message.payload:
            return
        event_type = AudioData if message.type_id == MessageType.AUDIO else VideoData
        events.append(event_type(message.stream_id, message.timestamp, message.payload))

    def _on_data(self, message: Message, events: list[Event]) -> None:
        if not self._is_publishing(message.stream_id):
            return
        values = msg.amf_values(message)
        if values[:1] == ["@setDataFrame"]:
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            events.append(MetaData(message.stream_id, message.timestamp, values[1]))

    # ------------------------------------------------------------------ commands

    def _on_command(self, command: Command, message: Message, events: list[Event]) -> None:
        if self.state is ConnectionState.CONNECTING and command.name != "connect":
            raise ProtocolError(f"command {command.name!r} before connect")
        handler = self._commands.get(command.name)
        if handler is not None:
            handler(command, message, events)
        elif command.transaction_id and command.name not in _IGNORED_COMMANDS:
            self._send_command(
                message.stream_id,
                "_error",
                command.transaction_id,
                None,
                _info("error", "NetConnection.Call.Failed", f"unknown command {command.name!r}"),
            )

    def _on_connect(self, command: Command, message: Message, events: list[Event]) -> None:
        if self.state is not ConnectionState.CONNECTING:
            raise ProtocolError("second connect on one connection")
        properties = command.command_object if isinstance(command.command_object, dict) else {}
        app = properties.get("app")
        tc_url = properties.get("tcUrl")
        self.app = app if isinstance(app, str) else ""
        self.tc_url = tc_url if isinstance(tc_url, str) else None
        self.state = ConnectionState.CONNECTED

        self._send(msg.window_ack_size(self.window_ack_size))
        self._send(msg.set_peer_bandwidth(self.peer_bandwidth, msg.PeerBandwidthLimit.DYNAMIC))
        self._send(msg.set_chunk_size(self.out_chunk_size))
        info = _info("status", "NetConnection.Connect.Success", "Connection succeeded.")
        info["objectEncoding"] = 0.0
        server = {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0}
        self._send_command(0, "_result", command.transaction_id, server, info)
        events.append(ConnectRequested(self.app, self.tc_url, properties))

    def _on_release_stream(self, command: Command, message: Message, events: list[Event]) -> None:
        self._send_result(command, message)

    def _on_fc_publish(self, command: Command, message: Message, events: list[Event]) -> None:
        name = _first_str(command.args)
        info = _info("status", "NetStream.Publish.Start", name)
        self._send_command(message.stream_id, "onFCPublish", 0, None, info)
        self._send_result(command, message)

    def _on_create_stream(self, command: Command, message: Message, events: list[Event]) -> None:
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        self._send_command(message.stream_id, "_result", command.transaction_id, None, stream_id)

    def _on_publish(self, command: Command, message: Message, events: list[Event]) -> None:
        if self._publish_stream_id is not None:
            raise ProtocolError("publish while a publish is already active on this connection")
        if not command.args or not isinstance(command.args[0], str):
            raise ProtocolError("publish without a stream name")
        name, _, query = command.args[0].partition("?")
        publish_type = command.args[1] if len(command.args) > 1 else "live"
        if not isinstance(publish_type, str):
            publish_type = "live"
        self._publish_stream_id = message.stream_id
        self._publish_accepted = False
        self._publish_name = name
        app = self.app or ""
        events.append(PublishRequested(message.stream_id, name, publish_type, app, query))

    def _on_fc_unpublish(self, command: Command, message: Message, events: list[Event]) -> None:
        name = _first_str(command.args)
        info = _info("status", "NetStream.Unpublish.Success", name)
        self._send_command(message.stream_id, "onFCUnpublish", 0, None, info)
        self._send_result(command, message)
        if self._publish_stream_id is not None:
            self._unpublished(self._publish_stream_id, events)

    def _on_close_stream(self, command: Command, message: Message, events: list[Event]) -> None:
        self._send_result(command, message)
        self._unpublished(message.stream_id, events)

    def _on_delete_stream(self, command: Command, message: Message, events: list[Event]) -> None:
        self._send_result(command, message)
        stream_id = command.args[0] if command.args else None
        if isinstance(stream_id, float) and stream_id.is_integer():
            self._unpublished(int(stream_id), events)

    def _on_get_stream_length(self, command: Command, message: Message, _: list[Event]) -> None:
        if command.transaction_id:
            self._send_command(message.stream_id, "_result", command.transaction_id, None, 0.0)

    def _on_play(self, command: Command, message: Message, events: list[Event]) -> None:
        description = "This server accepts publishers only."
        self._send_status(message.stream_id, "error", "NetStream.Play.Failed", description)

    def _unpublished(self, stream_id: int, events: list[Event]) -> None:
        if stream_id == self._publish_stream_id:
            self._clear_publish()
            events.append(Unpublished(stream_id))

    def _clear_publish(self) -> None:
        self._publish_stream_id = None
        self._publish_accepted = False
        if self.state is ConnectionState.PUBLISHING:
            self.state = ConnectionState.CONNECTED

    # ------------------------------------------------------------------ output

    def _send(self, message: Message) -> None:
        self._out += self._writer.write(message)

    def _send_command(self, stream_id: int, name: str, txn: float, *args: Any) -> None:
        self._send(msg.command(name, txn, *args, stream_id=stream_id))

    def _send_result(self, command: Command, message: Message) -> None:
        """A bare ``_result`` for commands whose caller may wait on its transaction id."""
        if command.transaction_id:
            txn = command.transaction_id
            self._send_command(message.stream_id, "_result", txn, None, UNDEFINED)

    def _send_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        self._send_command(stream_id, "onStatus", 0, None, _info(level, code, description))


def _info(level: str, code: str, description: str) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description}


def _first_str(values: list[Any]) -> str:
    return values[0] if values and isinstance(values[0], str) else ""
