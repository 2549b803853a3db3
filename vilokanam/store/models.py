"""SQL tables: channels (with hashed stream keys), stream sessions, webhook deliveries.

The schema is owned by the alembic migrations in ``vilokanam/store/migrations``; a change here
needs a new migration (``tests/unit/test_store.py`` checks that they agree).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on SQLite (naive column) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use an aware UTC datetime (store.models.utcnow)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SessionState(StrEnum):
    STARTING = "starting"  # publisher accepted, no segment yet
    LIVE = "live"  # first segment written
    ENDED = "ended"  # publisher gone and the reconnect window passed


class Channel(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(index=True, unique=True, max_length=63)
    title: str = ""
    category: str = ""
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    price_per_second: int = Field(default=0, sa_type=BigInteger, ge=0)  # type: ignore[arg-type]
    """Integer planck a viewer pays per second watched; 0 is a free channel."""
    ladder: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    """Rungs that replace ``transcode.ladder`` for this channel (None: the server's ladder)."""
    stream_key_hash: str | None = Field(default=None, index=True, unique=True, max_length=64)
    """SHA-256 hex of the stream key (192-bit random, so a fast hash is enough); None: revoked."""
    key_rotated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]


class StreamSession(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    channel_id: int = Field(foreign_key="channel.id", index=True, ondelete="CASCADE")
    state: SessionState = Field(default=SessionState.STARTING, index=True)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    live_at: datetime | None = Field(default=None, sa_type=UtcDateTime)  # type: ignore[arg-type]
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime)  # type: ignore[arg-type]
    segments: int = 0
    """Media segments written in the highest rendition count, for history and VOD."""
    peak_viewers: int = 0
    publisher: str = ""
    """Address of the (last) publishing client, ``host:port``."""
    end_reason: str | None = None
    """Why the stream ended: publisher left, kicked, transcoder failed, server shutdown…"""
    recording_location: str | None = None
    """Where the stream's recording is kept (set when recording is on), else None."""


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the last attempt


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint: a durable outbox row, retried until delivered or given up."""

    __tablename__ = "webhook_delivery"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(index=True, max_length=64)
    """Same for every endpoint of one event; receivers de-duplicate on it."""
    event: str = Field(max_length=64)
    url: str
    body: str = Field(sa_type=Text)  # type: ignore[arg-type]
    """The exact JSON text that is signed and sent."""
    state: DeliveryState = Field(default=DeliveryState.PENDING, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime, index=True)  # type: ignore[arg-type]
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)  # type: ignore[arg-type]
