"""SQL tables: channels (with hashed stream keys) and stream sessions."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class SessionState(StrEnum):
    STARTING = "starting"  # publisher accepted, no segment yet
    LIVE = "live"  # first segment written
    ENDED = "ended"  # publisher gone and the reconnect window passed


class Channel(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(index=True, unique=True, max_length=63)
    title: str = ""
    stream_key_hash: str = Field(index=True, unique=True, max_length=64)
    """SHA-256 hex of the stream key: keys are 192-bit random, so a fast hash is enough."""
    key_rotated_at: datetime = Field(default_factory=utcnow)
    created_at: datetime = Field(default_factory=utcnow)


class StreamSession(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    channel_id: int = Field(foreign_key="channel.id", index=True)
    state: SessionState = Field(default=SessionState.STARTING, index=True)
    started_at: datetime = Field(default_factory=utcnow)
    live_at: datetime | None = None
    ended_at: datetime | None = None
    segments: int = 0
    """Media segments written in the highest rendition count, for history and VOD."""
