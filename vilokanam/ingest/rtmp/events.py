"""What :class:`~vilokanam.ingest.rtmp.ServerConnection` reports to the application."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The client sent ``connect``; the core has already accepted it (informational)."""

    app: str
    tc_url: str | None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishRequested:
    """The client wants to publish; answer with ``accept_publish`` or ``reject_publish``.

    ``name`` is the stream key with any ``?query`` suffix moved into ``query``.
    """

    stream_id: int
    name: str
    publish_type: str
    app: str
    query: str = ""


@dataclass(frozen=True, slots=True)
class MetaData:
    """``onMetaData`` for the publishing stream (from ``@setDataFrame`` or sent bare)."""

    stream_id: int
    timestamp: int
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AudioData:
    """An audio message: ``payload`` is the FLV audio tag body, header byte included."""

    stream_id: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class VideoData:
    """A video message: ``payload`` is the FLV video tag body, header byte included."""

    stream_id: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Unpublished:
    """The client stopped publishing (FCUnpublish, closeStream or deleteStream)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionClosedByPeer:
    """``receive_data(b"")``: the peer closed its side."""


Event = (
    ConnectRequested
    | PublishRequested
    | MetaData
    | AudioData
    | VideoData
    | Unpublished
    | ConnectionClosedByPeer
)
