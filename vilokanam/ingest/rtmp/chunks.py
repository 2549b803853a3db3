"""The RTMP chunk stream (spec section 5.3): messages ↔ interleaved, header-compressed chunks.

:class:`ChunkReader` reassembles messages from bytes, :class:`ChunkWriter` splits messages
into bytes. Both own their direction's chunk size: a Set Chunk Size message passing through
takes effect for the chunks after it, exactly where the peer starts using it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vilokanam.ingest.rtmp.errors import ProtocolError
from vilokanam.ingest.rtmp.messages import Message, MessageType

DEFAULT_CHUNK_SIZE: Final = 128
MAX_CHUNK_SIZE: Final = 0x7FFFFFFF
DEFAULT_MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
"""Largest audio/video message accepted (a 4K keyframe fits); RTMP allows 16 MiB - 1."""
MAX_CONTROL_MESSAGE_SIZE: Final = 64 * 1024
"""Commands, data and control messages are small; a huge one is an attack or garbage."""
_MEDIA_TYPES: Final = frozenset({MessageType.AUDIO, MessageType.VIDEO, MessageType.AGGREGATE})
DEFAULT_MAX_PENDING_BYTES: Final = 64 * 1024 * 1024
MIN_CSID: Final = 2
MAX_CSID: Final = 65599
EXTENDED_TIMESTAMP: Final = 0xFFFFFF
TIMESTAMP_MASK: Final = 0xFFFFFFFF

_HEADER_SIZES: Final = (11, 7, 3, 0)


def validate_chunk_size(size: int, error: type[Exception] = ProtocolError) -> int:
    """Spec 5.4.1: 31 bits, at least 1. ``error`` is ValueError for our own settings."""
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise error(f"invalid chunk size {size} (allowed 1..{MAX_CHUNK_SIZE})")
    return size


@dataclass(slots=True)
class _ChunkStreamState:
    """What later, compressed headers on one chunk stream inherit."""

    timestamp: int = 0
    delta: int = 0  # timestamp field of the last type 0/1/2 header; type-3 messages reuse it
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False  # the last type 0/1/2 header used an extended timestamp
    payload: bytearray | None = None  # the message being reassembled, if any


class ChunkReader:
    """Demultiplexes a chunk stream into complete messages.

    Incomplete chunks stay buffered until the rest arrives, so any split of the input into
    :meth:`feed` calls yields the same messages. Set Chunk Size and Abort are applied here
    (they belong to this layer) and are also returned for the caller to see.
    """

    def __init__(
        self,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self.chunk_size = validate_chunk_size(chunk_size)
        self.max_message_size = max_message_size
        self.max_pending_bytes = max_pending_bytes
        self._buffer = bytearray()
        self._streams: dict[int, _ChunkStreamState] = {}
        self._pending_bytes = 0

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes; return every message they complete, in arrival order."""
        self._buffer += data
        messages: list[Message] = []
        pos = 0
        try:
            while (step := self._read_chunk(pos)) is not None:
                pos, message = step
                if message is not None:
                    self._apply_control(message)
                    messages.append(message)
        finally:
            del self._buffer[:pos]
        return messages

    def _read_chunk(self, pos: int) -> tuple[int, Message | None] | None:
        """Parse one chunk at ``pos``; None (consuming nothing) if it is not all here yet."""
        buf = self._buffer
        end = len(buf)
        if pos >= end:
            return None
        fmt, csid = buf[pos] >> 6, buf[pos] & 0x3F
        p = pos + 1
        if csid == 0:  # 2-byte form: 64..319
            if end < p + 1:
                return None
            csid = 64 + buf[p]
            p += 1
        elif csid == 1:  # 3-byte form: 64..65599, little-endian
            if end < p + 2:
                return None
            csid = 64 + buf[p] + (buf[p + 1] << 8)
            p += 2
        if end < p + _HEADER_SIZES[fmt]:
            return None

        # A chunk stream should start with a type-0 header, but librtmp (OBS, rtmpdump) opens
        # chunk stream 2 with a type-1 header; like other servers, absent fields start at zero.
        state = self._streams.get(csid) or _ChunkStreamState()
        in_progress = state.payload is not None
        if fmt != 3 and in_progress:
            raise ProtocolError(f"type-{fmt} header on chunk stream {csid} inside a message")

        length, type_id, stream_id = state.length, state.type_id, state.stream_id
        if fmt == 3:
            extended, field = state.extended, state.delta
        else:
            field = int.from_bytes(buf[p : p + 3], "big")
            if fmt <= 1:
                length = int.from_bytes(buf[p + 3 : p + 6], "big")
                type_id = buf[p + 6]
            if fmt == 0:
                stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
            extended = field == EXTENDED_TIMESTAMP
            p += _HEADER_SIZES[fmt]

        if fmt == 0:
            timestamp = field
        elif fmt == 3 and in_progress:
            timestamp = state.timestamp
        else:
            timestamp = (state.timestamp + field) & TIMESTAMP_MASK

        if extended:
            if end < p + 4:
                return None
            value = int.from_bytes(buf[p : p + 4], "big")
            if fmt != 3:
                field = value
                timestamp = value if fmt == 0 else (state.timestamp + value) & TIMESTAMP_MASK
                p += 4
            elif value in (field, timestamp):
                # Spec 5.3.1.3: type-3 chunks repeat the extended field. Some writers (old
                # librtmp, rtmpdump) omit it; they are recognised by the value not matching.
                p += 4

        done = len(state.payload) if state.payload is not None else 0
        limit = self.max_message_size
        if type_id not in _MEDIA_TYPES:
            limit = min(limit, MAX_CONTROL_MESSAGE_SIZE)
        if not in_progress and length > limit:
            raise ProtocolError(
                f"message of {length} bytes (type {type_id}) on chunk stream {csid} exceeds "
                f"the {limit}-byte limit"
            )
        size = min(self.chunk_size, length - done)
        if end < p + size:
            return None

        # The whole chunk is here: commit.
        self._streams[csid] = state
        if fmt != 3:
            state.delta, state.extended = field, extended
            state.length, state.type_id, state.stream_id = length, type_id, stream_id
        state.timestamp = timestamp
        body = buf[p : p + size]
        p += size
        if done + size < length:
            if state.payload is None:
                state.payload = bytearray()
            state.payload += body
            self._pending_bytes += size
            if self._pending_bytes > self.max_pending_bytes:
                raise ProtocolError("too many bytes buffered in partial messages")
            return p, None
        if state.payload is not None:
            self._pending_bytes -= len(state.payload)
            state.payload += body
            body = state.payload
            state.payload = None
        return p, Message(type_id, bytes(body), timestamp, stream_id, csid)

    def _apply_control(self, message: Message) -> None:
        if message.type_id == MessageType.SET_CHUNK_SIZE:
            self.chunk_size = validate_chunk_size(_u32(message))
        elif message.type_id == MessageType.ABORT:
            state = self._streams.get(_u32(message))
            if state is not None and state.payload is not None:
                self._pending_bytes -= len(state.payload)
                state.payload = None


def _u32(message: Message) -> int:
    if len(message.payload) < 4:
        raise ProtocolError(f"control message type {message.type_id} shorter than 4 bytes")
    return int.from_bytes(message.payload[:4], "big")


@dataclass(slots=True)
class _OutboundState:
    timestamp: int
    delta: int
    length: int
    type_id: int
    stream_id: int


class ChunkWriter:
    """Multiplexes messages into chunks, compressing headers against the previous message.

    The first message on a chunk stream, a change of message stream, or a timestamp going
    backwards gets a type-0 header; otherwise the smallest header that lets the reader
    reconstruct the message is used (type 1, 2, or 3 when the delta repeats). Usable in both
    directions: the server writes replies with it, tests write client streams.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, *, compress: bool = True) -> None:
        self.chunk_size = validate_chunk_size(chunk_size, ValueError)
        self.compress = compress
        self._streams: dict[int, _OutboundState] = {}

    def write(self, message: Message) -> bytes:
        """Chunk one message; a Set Chunk Size message changes the size for later chunks."""
        csid = message.csid
        if not MIN_CSID <= csid <= MAX_CSID:
            raise ValueError(f"chunk stream id {csid} outside {MIN_CSID}..{MAX_CSID}")
        length = len(message.payload)
        if length > 0xFFFFFF:
            raise ValueError(f"message of {length} bytes does not fit a 24-bit length")
        new_chunk_size = None
        if message.type_id == MessageType.SET_CHUNK_SIZE and length >= 4:
            new_chunk_size = int.from_bytes(message.payload[:4], "big")
            validate_chunk_size(new_chunk_size, ValueError)
        timestamp = message.timestamp & TIMESTAMP_MASK
        prev = self._streams.get(csid)

        if (
            not self.compress
            or prev is None
            or prev.stream_id != message.stream_id
            or timestamp < prev.timestamp
        ):
            fmt, field = 0, timestamp
        else:
            field = timestamp - prev.timestamp
            if prev.type_id != message.type_id or prev.length != length:
                fmt = 1
            else:
                fmt = 3 if field == prev.delta else 2
        self._streams[csid] = _OutboundState(
            timestamp, field, length, message.type_id, message.stream_id
        )

        extended = field >= EXTENDED_TIMESTAMP
        ext = field.to_bytes(4, "big") if extended else b""
        header = _basic_header(fmt, csid)
        if fmt <= 2:
            header += min(field, EXTENDED_TIMESTAMP).to_bytes(3, "big")
        if fmt <= 1:
            header += length.to_bytes(3, "big") + bytes((message.type_id,))
        if fmt == 0:
            header += message.stream_id.to_bytes(4, "little")

        payload = message.payload
        size = self.chunk_size
        parts = [header, ext, payload[:size]]
        continuation = _basic_header(3, csid) + ext
        for offset in range(size, length, size):
            parts += (continuation, payload[offset : offset + size])

        if new_chunk_size is not None:
            self.chunk_size = new_chunk_size
        return b"".join(parts)


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes((fmt << 6 | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes((fmt << 6 | 1, rest & 0xFF, rest >> 8))
