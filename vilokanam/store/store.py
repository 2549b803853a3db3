"""Queries on the store. Synchronous (SQLAlchemy); async callers use ``asyncio.to_thread``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, create_engine, select

from vilokanam.store.keys import SLUG_RULE, hash_stream_key, key_matches, new_stream_key, valid_slug
from vilokanam.store.models import Channel, SessionState, StreamSession, utcnow


class StoreError(ValueError):
    """A request the store refuses (bad slug, duplicate, unknown channel)."""


class ChannelExists(StoreError):
    pass


class ChannelNotFound(StoreError):
    pass


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """Channels, stream keys and stream sessions."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        SQLModel.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    # -- channels -------------------------------------------------------------
    def create_channel(self, slug: str, title: str = "") -> tuple[Channel, str]:
        """Create a channel; returns it with its stream key (the only time the key is shown)."""
        if not valid_slug(slug):
            raise StoreError(f"invalid slug {slug!r}: {SLUG_RULE}")
        key = new_stream_key()
        channel = Channel(slug=slug, title=title or slug, stream_key_hash=hash_stream_key(key))
        with self.session() as db:
            db.add(channel)
            try:
                db.commit()
            except IntegrityError as exc:
                raise ChannelExists(f"channel {slug!r} already exists") from exc
            db.refresh(channel)
        return channel, key

    def list_channels(self) -> list[Channel]:
        with self.session() as db:
            return list(db.exec(select(Channel).order_by(Channel.slug)))

    def get_channel(self, slug: str) -> Channel:
        with self.session() as db:
            channel = db.exec(select(Channel).where(Channel.slug == slug)).first()
        if channel is None:
            raise ChannelNotFound(f"no channel {slug!r} (see `vilokanam channel list`)")
        return channel

    def rotate_key(self, slug: str) -> str:
        """Give the channel a new key; the old one stops working at once."""
        key = new_stream_key()
        with self.session() as db:
            channel = db.exec(select(Channel).where(Channel.slug == slug)).first()
            if channel is None:
                raise ChannelNotFound(f"no channel {slug!r} (see `vilokanam channel list`)")
            channel.stream_key_hash = hash_stream_key(key)
            channel.key_rotated_at = utcnow()
            db.add(channel)
            db.commit()
        return key

    def channel_for_key(self, key: str) -> Channel | None:
        """The channel whose stream key this is, or None."""
        if not key:
            return None
        with self.session() as db:
            channel = db.exec(
                select(Channel).where(Channel.stream_key_hash == hash_stream_key(key))
            ).first()
        if channel is None or not key_matches(key, channel.stream_key_hash):
            return None
        return channel

    # -- stream sessions ------------------------------------------------------
    def start_session(self, channel_id: int, publisher: str = "") -> StreamSession:
        stream = StreamSession(channel_id=channel_id, publisher=publisher)
        with self.session() as db:
            db.add(stream)
            db.commit()
            db.refresh(stream)
        return stream

    def update_session(
        self,
        session_id: int,
        *,
        state: SessionState | None = None,
        segments: int | None = None,
        at: datetime | None = None,
        peak_viewers: int | None = None,
        end_reason: str | None = None,
    ) -> StreamSession:
        with self.session() as db:
            stream = db.get(StreamSession, session_id)
            if stream is None:
                raise StoreError(f"no stream session {session_id}")
            state = SessionState(state) if state is not None else None
            if state is SessionState.LIVE and stream.live_at is None:
                stream.live_at = at or utcnow()
            if state is SessionState.ENDED and stream.ended_at is None:
                stream.ended_at = at or utcnow()
            if state is not None:
                stream.state = state
            if segments is not None:
                stream.segments = segments
            if peak_viewers is not None:
                stream.peak_viewers = max(stream.peak_viewers, peak_viewers)
            if end_reason is not None:
                stream.end_reason = end_reason
            db.add(stream)
            db.commit()
            db.refresh(stream)
        return stream

    def sessions(self, channel_id: int | None = None) -> list[StreamSession]:
        with self.session() as db:
            query = select(StreamSession).order_by(StreamSession.id)
            if channel_id is not None:
                query = query.where(StreamSession.channel_id == channel_id)
            return list(db.exec(query))

    def end_unfinished_sessions(self) -> int:
        """At start-up: sessions a crashed server left open are ended now."""
        with self.session() as db:
            open_sessions = list(
                db.exec(select(StreamSession).where(StreamSession.state != SessionState.ENDED))
            )
            for stream in open_sessions:
                stream.state = SessionState.ENDED
                stream.ended_at = stream.ended_at or utcnow()
                db.add(stream)
            db.commit()
        return len(open_sessions)
