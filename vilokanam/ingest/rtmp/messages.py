"""RTMP messages: type ids, the message record, and the small fixed-layout payloads.

The chunk layer moves :class:`Message` records; this module knows what the protocol-control,
user-control and command payloads look like (RTMP 1.0 spec, sections 5.4, 6.2 and 7.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from vilokanam.ingest.rtmp import amf0
from vilokanam.ingest.rtmp.errors import ProtocolError

CSID_PROTOCOL: Final = 2
"""Chunk stream reserved for protocol-control and user-control messages."""
CSID_COMMAND: Final = 3
"""Chunk stream for connection-level commands (stream id 0)."""
CSID_STREAM_COMMAND: Final = 5
"""Chunk stream for per-stream commands such as ``onStatus``."""
CSID_AUDIO: Final = 6
CSID_VIDEO: Final = 7
CSID_DATA: Final = 4


class MessageType(IntEnum):
    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class UserControlEvent(IntEnum):
    STREAM_BEGIN = 0
    STREAM_EOF = 1
    STREAM_DRY = 2
    SET_BUFFER_LENGTH = 3
    STREAM_IS_RECORDED = 4
    PING_REQUEST = 6
    PING_RESPONSE = 7


class PeerBandwidthLimit(IntEnum):
    HARD = 0
    SOFT = 1
    DYNAMIC = 2


@dataclass(frozen=True, slots=True)
class Message:
    """One whole RTMP message; ``csid`` is the chunk stream it travelled (or will travel) on."""

    type_id: int
    payload: bytes
    timestamp: int = 0
    stream_id: int = 0
    csid: int = CSID_COMMAND


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded command message: ``name(transaction_id, command_object, *args)``."""

    name: str
    transaction_id: float
    command_object: Any
    args: list[Any]


# --------------------------------------------------------------------------- payload readers


def read_u32(message: Message) -> int:
    """The 4-byte big-endian value that most protocol-control messages carry."""
    if len(message.payload) < 4:
        raise ProtocolError(
            f"message type {message.type_id} needs 4 payload bytes, got {len(message.payload)}"
        )
    return int.from_bytes(message.payload[:4], "big")


def read_user_control(message: Message) -> tuple[int, bytes]:
    """Split a user-control payload into its event type and event data."""
    if len(message.payload) < 2:
        raise ProtocolError("user control message shorter than its 2-byte event type")
    return int.from_bytes(message.payload[:2], "big"), message.payload[2:]


def amf_values(message: Message) -> list[Any]:
    """Decode a command or data body; AMF3-typed messages carry AMF0 after a 0x00 format byte."""
    payload = message.payload
    amf3 = message.type_id in (MessageType.COMMAND_AMF3, MessageType.DATA_AMF3)
    if amf3 and payload[:1] == b"\0":
        payload = payload[1:]
    return amf0.decode(payload)


def decode_command(message: Message) -> Command:
    """Decode a command message; the name must be a string, the rest is taken as sent."""
    values = amf_values(message)
    if not values or not isinstance(values[0], str):
        raise ProtocolError("command message does not start with a command name")
    txn = values[1] if len(values) > 1 else 0.0
    if isinstance(txn, bool) or not isinstance(txn, float):
        txn = 0.0
    command_object = values[2] if len(values) > 2 else None
    return Command(values[0], txn, command_object, values[3:])


# --------------------------------------------------------------------------- message builders


def set_chunk_size(size: int) -> Message:
    return Message(MessageType.SET_CHUNK_SIZE, size.to_bytes(4, "big"), csid=CSID_PROTOCOL)


def abort(csid: int) -> Message:
    return Message(MessageType.ABORT, csid.to_bytes(4, "big"), csid=CSID_PROTOCOL)


def acknowledgement(sequence_number: int) -> Message:
    payload = (sequence_number & 0xFFFFFFFF).to_bytes(4, "big")
    return Message(MessageType.ACKNOWLEDGEMENT, payload, csid=CSID_PROTOCOL)


def window_ack_size(size: int) -> Message:
    return Message(MessageType.WINDOW_ACK_SIZE, size.to_bytes(4, "big"), csid=CSID_PROTOCOL)


def set_peer_bandwidth(size: int, limit: PeerBandwidthLimit) -> Message:
    payload = size.to_bytes(4, "big") + bytes((limit,))
    return Message(MessageType.SET_PEER_BANDWIDTH, payload, csid=CSID_PROTOCOL)


def user_control(event: UserControlEvent, value: int) -> Message:
    """User-control events used here all carry one 4-byte value (a stream id or a timestamp)."""
    payload = int(event).to_bytes(2, "big") + (value & 0xFFFFFFFF).to_bytes(4, "big")
    return Message(MessageType.USER_CONTROL, payload, csid=CSID_PROTOCOL)


def command(
    name: str,
    transaction_id: float,
    *args: Any,
    stream_id: int = 0,
    csid: int | None = None,
) -> Message:
    """An AMF0 command; ``args`` starts with the command object (often ``None``)."""
    if csid is None:
        csid = CSID_STREAM_COMMAND if stream_id else CSID_COMMAND
    payload = amf0.encode_all((name, float(transaction_id), *args))
    return Message(MessageType.COMMAND_AMF0, payload, stream_id=stream_id, csid=csid)


def data(*values: Any, stream_id: int, timestamp: int = 0, csid: int = CSID_DATA) -> Message:
    """An AMF0 data message such as ``@setDataFrame``."""
    payload = amf0.encode_all(values)
    return Message(MessageType.DATA_AMF0, payload, timestamp, stream_id, csid)
