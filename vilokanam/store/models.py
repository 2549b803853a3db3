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
    payout_address: str | None = Field(default=None, max_length=64)
    """The creator's chain address (ss58) that settlement pays; None: earnings stay in the
    ledger until one is set."""
    record: bool | None = None
    """Keep this channel's streams as VODs (None: ``recording.enabled``)."""
    vod_retention_days: int | None = Field(default=None, ge=0)
    """Delete this channel's VODs after this many days, 0 keeps them (None: the server's
    ``recording.retention_days``)."""
    stream_key_hash: str | None = Field(default=None, index=True, unique=True, max_length=64)
    """SHA-256 hex of the stream key (192-bit random, so a fast hash is enough); None: revoked."""
    key_rotated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]


class StreamSession(SQLModel, table=True):
    __table_args__ = {"sqlite_autoincrement": True}  # ids name media folders: never reused
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
    recorded: bool | None = None
    """Whether the session is kept as a VOD, decided at its start (None: from before that was
    saved). Media of an ended session known not to be recorded is deleted after a while."""
    durations_ms: list[int] | None = Field(default=None, sa_column=Column(JSON))
    """EXTINF of each media sequence in ms (index = sequence, 0 = never listed); written with
    progress and at the end, so CDN logs read after the stream can still be billed."""


class Recording(SQLModel, table=True):
    """An ended stream kept as a VOD: every segment, served at ``/vod/{session_id}/``."""

    session_id: int = Field(primary_key=True, foreign_key="streamsession.id", ondelete="CASCADE")
    channel_id: int = Field(foreign_key="channel.id", index=True, ondelete="CASCADE")
    prefix: str = Field(max_length=255)
    """Storage prefix of its media (``streams/{session_id}``)."""
    storage: str = Field(default="local", max_length=16)
    """Backend that holds the media: ``local`` or ``s3``."""
    renditions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    duration_ms: int = Field(default=0, sa_type=BigInteger)  # type: ignore[arg-type]
    segments: int = 0
    """Media segments per rendition."""
    size_bytes: int = Field(default=0, sa_type=BigInteger)  # type: ignore[arg-type]
    """Bytes of every rendition's segments."""
    thumbnail: bool = False
    """Whether a poster ``thumbnail.jpg`` exists."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime, index=True)  # type: ignore[arg-type]
    """When retention deletes it (None: kept until deleted)."""


class LogCursor(SQLModel, table=True):
    """How far ``billing ingest-logs`` has read one CDN access log file."""

    __tablename__ = "log_cursor"

    source: str = Field(primary_key=True, max_length=255)
    """The file's identity: its name plus a hash of its first line (survives renames/rotation)."""
    offset: int = Field(default=0, sa_type=BigInteger)  # type: ignore[arg-type]
    """Bytes read and fed (always at a line end)."""
    lines: int = Field(default=0, sa_type=BigInteger)  # type: ignore[arg-type]
    fetches: int = Field(default=0, sa_type=BigInteger)  # type: ignore[arg-type]
    """Segment requests found and fed to the tracker so far."""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]


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


# -- billing ----------------------------------------------------------------------------------


class Viewer(SQLModel, table=True):
    """A paying viewer: a name, a chain address for deposits, a hashed API key."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=63)
    address: str | None = Field(default=None, index=True, unique=True, max_length=64)
    """ss58 address the viewer deposits from (credited by the chain watcher)."""
    key_hash: str = Field(index=True, unique=True, max_length=64)
    """SHA-256 of the viewer's API key (``vk_…``), used to ask for playback tokens."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]


class EntryKind(StrEnum):
    DEPOSIT = "deposit"  # outside world → viewer
    WATCH = "watch"  # viewer → creator + platform fee, for whole seconds watched
    PAYOUT = "payout"  # creator → paid out on chain (settlement)


class LedgerEntry(SQLModel, table=True):
    """One money movement; its postings sum to zero. ``key`` makes posting it idempotent."""

    __tablename__ = "ledger_entry"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=200)
    kind: EntryKind = Field(index=True)
    viewer_id: int | None = Field(default=None, index=True)
    channel_id: int | None = Field(default=None, index=True)
    session_id: int | None = Field(default=None, index=True)
    seconds: int = 0
    """Ticks (whole seconds watched) for a watch entry."""
    amount: int = Field(default=0, sa_type=BigInteger)  # type: ignore[arg-type]
    """Gross amount in planck (what the viewer paid; what was deposited or paid out)."""
    batch_id: str | None = Field(default=None, index=True, max_length=64)
    """The settlement batch that settled this watch entry (None: not settled yet)."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime, index=True)  # type: ignore[arg-type]


class Posting(SQLModel, table=True):
    """One side of an entry: ``amount`` (signed planck) to ``account``."""

    id: int | None = Field(default=None, primary_key=True)
    entry_id: int = Field(foreign_key="ledger_entry.id", index=True)
    account: str = Field(index=True, max_length=64)
    """``viewer:{id}``, ``creator:{channel_id}``, ``platform``, ``deposits``, ``payouts``."""
    amount: int = Field(sa_type=BigInteger)  # type: ignore[arg-type]


class WatchState(SQLModel, table=True):
    """What the tracker has billed one viewer for one stream session (survives restarts)."""

    __tablename__ = "watch_state"

    viewer_id: int = Field(primary_key=True)
    session_id: int = Field(primary_key=True)
    first_fetch_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    content_ms: int = Field(default=0, sa_type=BigInteger)  # type: ignore[arg-type]
    """Milliseconds of content credited, the free preview included (billing starts after it)."""
    pending_ms: int = Field(default=0, sa_type=BigInteger)  # type: ignore[arg-type]
    """Milliseconds fetched ahead of the wall-clock cap, credited as the viewer keeps watching."""
    ticks: int = 0
    """Whole seconds posted to the ledger so far."""
    sequences: list[list[int]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """Media sequence numbers already credited, as sorted ``[first, last]`` ranges."""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]


class BatchState(StrEnum):
    PREPARED = "prepared"  # written before submission
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"  # found on chain: paid exactly once
    FAILED = "failed"  # the chain refused it (nothing paid); its entries are free again


class SettlementBatch(SQLModel, table=True):
    __tablename__ = "settlement_batch"

    id: str = Field(primary_key=True, max_length=64)
    state: BatchState = Field(default=BatchState.PREPARED, index=True)
    backend: str = Field(default="local", max_length=16)
    digest: str = Field(max_length=64)
    """SHA-256 hex over the batch's entries (key, seconds, amount), carried in the remark."""
    payouts: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    """``[{"channel_id", "address", "amount"}]`` paid by this batch."""
    ticks: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]
    submitted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)  # type: ignore[arg-type]
    confirmed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)  # type: ignore[arg-type]
    extrinsic_hash: str | None = Field(default=None, max_length=80)
    block_hash: str | None = Field(default=None, max_length=80)
    error: str | None = None
    nonce: int | None = Field(default=None, sa_type=BigInteger)  # type: ignore[arg-type]
    """The escrow nonce the batch's extrinsic is signed with (recorded before it first leaves;
    every resubmission reuses it, so at most one of them can ever be included)."""
    genesis_hash: str | None = Field(default=None, max_length=80)
    """Genesis hash of the chain the batch was submitted to."""
    submitted_block: int | None = None
    """The finalized height when the batch was first submitted: its lookup starts there."""


class ChainDeposit(SQLModel, table=True):
    """A finalized Balances transfer to the escrow account, credited once."""

    __tablename__ = "chain_deposit"

    key: str = Field(primary_key=True, max_length=120)
    """``{block_hash}:{extrinsic_index}:{event_index}``."""
    viewer_id: int | None = Field(default=None, index=True)
    sender: str = Field(max_length=64)
    amount: int = Field(sa_type=BigInteger)  # type: ignore[arg-type]
    block_number: int = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)  # type: ignore[arg-type]


class ChainCursor(SQLModel, table=True):
    """How far a chain reader (the deposit watcher) has read."""

    __tablename__ = "chain_cursor"

    name: str = Field(primary_key=True, max_length=64)
    block_number: int = 0
    genesis_hash: str = Field(default="", max_length=80)
    """The chain the cursor belongs to: a different genesis (a reset dev chain) restarts it."""
