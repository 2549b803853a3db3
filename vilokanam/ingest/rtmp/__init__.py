"""The RTMP protocol as a sans-I/O state machine (server side): bytes in, events out.

Usage::

    conn = ServerConnection(out_chunk_size=4096)
    for event in conn.receive_data(data):   # b"" at EOF
        ...                                  # PublishRequested -> conn.accept_publish(...)
    sock.send(conn.data_to_send())
"""

from vilokanam.ingest.rtmp.chunks import ChunkReader, ChunkWriter
from vilokanam.ingest.rtmp.connection import ConnectionState, ServerConnection
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
from vilokanam.ingest.rtmp.messages import Message, MessageType, UserControlEvent

__all__ = [
    "AudioData",
    "ChunkReader",
    "ChunkWriter",
    "ConnectRequested",
    "ConnectionClosedByPeer",
    "ConnectionState",
    "Event",
    "Message",
    "MessageType",
    "MetaData",
    "ProtocolError",
    "PublishRequested",
    "ServerConnection",
    "Unpublished",
    "UserControlEvent",
    "VideoData",
]
