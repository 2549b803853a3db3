"""Queries on the store. Synchronous (SQLAlchemy); async callers use ``asyncio.to_thread``."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from vilokanam.store import ss58
from vilokanam.store import validation as check
from vilokanam.store.engine import make_engine
from vilokanam.store.errors import (
    ChannelExists,
    ChannelNotFound,
    InvalidField,
    RecordingNotFound,
    SessionNotFound,
    StoreError,
    ViewerExists,
    ViewerNotFound,
)
from vilokanam.store.keys import SLUG_RULE, hash_stream_key, key_matches, new_stream_key, valid_slug
from vilokanam.store.migrate import upgrade
from vilokanam.store.models import (
    Channel,
    Recording,
    SessionState,
    StreamSession,
    Viewer,
    utcnow,
)

__all__ = [
    "UNSET",
    "ChannelExists",
    "ChannelNotFound",
    "InvalidField",
    "MediaState",
    "RecordingNotFound",
    "SessionNotFound",
    "Store",
    "StoreError",
    "ViewerExists",
    "ViewerNotFound",
    "make_engine",
]

MAX_PAGE = 1000
MAX_ADDRESS = 64


class _Unset(Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET
"""Default of ``update_channel(ladder=...)``: leave the ladder as it is (None clears it)."""


class MediaState(Enum):
    """What may happen to a stream session's media folder (:meth:`Store.media_states`)."""

    KEEP = "keep"
    """A VOD, or a session from before ``recorded`` was saved: kept."""
    UNKNOWN = "unknown"
    """No such session (deleted with its channel, or another database's): not ours to judge."""
    WAIT = "wait"
    """Live, or ended after the cut-off: ask again later."""
    UNRECORDED = "unrecorded"
    """Ended before the cut-off and not recorded: its media can go."""
    UNCATALOGUED = "uncatalogued"
    """Ended before the cut-off, recorded, but no VOD: one to make, or nothing to make one of."""


def _media_state(
    state: SessionState,
    ended_at: datetime | None,
    recorded: bool | None,
    vod: int | None,
    ended_before: datetime,
) -> MediaState:
    if vod is not None or recorded is None:
        return MediaState.KEEP
    if state != SessionState.ENDED or ended_at is None or ended_at >= ended_before:
        return MediaState.WAIT
    return MediaState.UNCATALOGUED if recorded else MediaState.UNRECORDED


def _not_found(slug: str) -> ChannelNotFound:
    return ChannelNotFound(f"no channel {slug!r} (see `vilokanam channel list`)")


class Store:
    """Channels, stream keys, stream sessions and viewers. Brings the schema up to date on start."""

    def __init__(self, url: str) -> None:
        self.applied_migrations = upgrade(url)
        self.engine = make_engine(url)

    def close(self) -> None:
        """Close pooled connections (the store stays usable; it reconnects on demand)."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    # -- channels -------------------------------------------------------------
    def create_channel(
        self,
        slug: str,
        title: str = "",
        *,
        category: str = "",
        tags: Iterable[str] = (),
        price_per_second: int = 0,
        ladder: Iterable[Mapping[str, Any]] | None = None,
        record: bool | None = None,
        vod_retention_days: int | None = None,
    ) -> tuple[Channel, str]:
        """Create a channel; returns it with its stream key (the only time the key is shown)."""
        check.slug(slug)
        key = new_stream_key()
        channel = Channel(
            slug=slug,
            title=check.text("title", title, check.MAX_TITLE) or slug,
            category=check.text("category", category, check.MAX_CATEGORY),
            tags=check.tags(tags),
            price_per_second=check.price(price_per_second),
            ladder=check.ladder(ladder),
            record=check.record(record),
            vod_retention_days=check.retention_days(vod_retention_days),
            stream_key_hash=hash_stream_key(key),
        )
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
            return self._channel(db, slug)

    def get_channel_by_id(self, channel_id: int) -> Channel:
        with self.session() as db:
            channel = db.get(Channel, channel_id)
        if channel is None:
            raise ChannelNotFound(f"no channel with id {channel_id}")
        return channel

    def update_channel(
        self,
        slug: str,
        *,
        title: str | None = None,
        category: str | None = None,
        tags: Iterable[str] | None = None,
        price_per_second: int | None = None,
        ladder: Iterable[Mapping[str, Any]] | _Unset | None = UNSET,
        payout_address: str | _Unset | None = UNSET,
        record: bool | _Unset | None = UNSET,
        vod_retention_days: int | _Unset | None = UNSET,
    ) -> Channel:
        """Change only the fields given (``ladder=None`` clears the override, and
        ``payout_address=None`` the payout address; ``record=None`` and
        ``vod_retention_days=None`` fall back to the server's settings); bumps updated_at."""
        changes: dict[str, Any] = {}
        if title is not None:
            changes["title"] = check.text("title", title, check.MAX_TITLE) or slug
        if category is not None:
            changes["category"] = check.text("category", category, check.MAX_CATEGORY)
        if tags is not None:
            changes["tags"] = check.tags(tags)
        if price_per_second is not None:
            changes["price_per_second"] = check.price(price_per_second)
        if ladder is not UNSET:
            changes["ladder"] = check.ladder(ladder)
        if payout_address is not UNSET:
            changes["payout_address"] = _address(payout_address, "payout_address")
        if record is not UNSET:
            changes["record"] = check.record(record)
        if vod_retention_days is not UNSET:
            changes["vod_retention_days"] = check.retention_days(vod_retention_days)
        with self.session() as db:
            channel = self._channel(db, slug)
            for name, value in changes.items():
                setattr(channel, name, value)
            channel.updated_at = utcnow()
            db.add(channel)
            db.commit()
            db.refresh(channel)
        return channel

    def delete_channel(self, slug: str) -> Channel:
        """Delete the channel and its stream sessions; returns what was deleted."""
        with self.session() as db:
            channel = self._channel(db, slug)
            db.delete(channel)
            db.commit()
        return channel

    def rotate_key(self, slug: str) -> str:
        """Give the channel a new key; the old one stops working at once."""
        key = new_stream_key()
        self._set_key(slug, hash_stream_key(key))
        return key

    def revoke_key(self, slug: str) -> Channel:
        """Take the channel's key away: nobody can publish until ``rotate_key`` gives a new one."""
        return self._set_key(slug, None)

    def channel_for_key(self, key: str) -> Channel | None:
        """The channel whose stream key this is, or None (never a channel with a revoked key)."""
        if not key:
            return None
        with self.session() as db:
            channel = db.exec(
                select(Channel).where(Channel.stream_key_hash == hash_stream_key(key))
            ).first()
        if channel is None or channel.stream_key_hash is None:
            return None
        return channel if key_matches(key, channel.stream_key_hash) else None

    def _set_key(self, slug: str, key_hash: str | None) -> Channel:
        with self.session() as db:
            channel = self._channel(db, slug)
            channel.stream_key_hash = key_hash
            channel.key_rotated_at = channel.updated_at = utcnow()
            db.add(channel)
            db.commit()
            db.refresh(channel)
        return channel

    @staticmethod
    def _channel(db: Session, slug: str) -> Channel:
        channel = db.exec(select(Channel).where(Channel.slug == slug)).first()
        if channel is None:
            raise _not_found(slug)
        return channel

    # -- stream sessions ------------------------------------------------------
    def start_session(
        self, channel_id: int, publisher: str = "", *, recorded: bool | None = None
    ) -> StreamSession:
        """A new session; ``recorded``: whether it is kept as a VOD (None: unknown, so its
        media is never swept)."""
        stream = StreamSession(channel_id=channel_id, publisher=publisher, recorded=recorded)
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
        durations_ms: list[int] | None = None,
    ) -> StreamSession:
        with self.session() as db:
            stream = db.get(StreamSession, session_id)
            if stream is None:
                raise SessionNotFound(f"no stream session {session_id}")
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
            if durations_ms is not None:
                stream.durations_ms = list(durations_ms)
            db.add(stream)
            db.commit()
            db.refresh(stream)
        return stream

    def segment_durations(self, session_id: int) -> list[int]:
        """EXTINF in ms by media sequence of a session (0: unknown); empty if none recorded."""
        with self.session() as db:
            stream = db.get(StreamSession, session_id)
            return list(stream.durations_ms or []) if stream is not None else []

    def sessions(self, channel_id: int | None = None) -> list[StreamSession]:
        with self.session() as db:
            query = select(StreamSession).order_by(StreamSession.id)  # type: ignore[arg-type]
            if channel_id is not None:
                query = query.where(StreamSession.channel_id == channel_id)
            return list(db.exec(query))

    def get_session(self, session_id: int) -> tuple[StreamSession, Channel]:
        with self.session() as db:
            row = db.exec(
                select(StreamSession, Channel)
                .join(Channel, StreamSession.channel_id == Channel.id)  # type: ignore[arg-type]
                .where(StreamSession.id == session_id)
            ).first()
        if row is None:
            raise SessionNotFound(f"no stream session {session_id}")
        return row[0], row[1]

    def history(
        self, slug: str | None = None, *, limit: int = 50, before_id: int | None = None
    ) -> list[tuple[StreamSession, Channel]]:
        """Stream sessions, newest first; the next page is ``before_id=<last id of this one>``."""
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidField("limit", f"invalid limit: an integer from 1 to {MAX_PAGE}")
        with self.session() as db:
            query = select(StreamSession, Channel).join(
                Channel,
                StreamSession.channel_id == Channel.id,  # type: ignore[arg-type]
            )
            if slug is not None:
                query = query.where(StreamSession.channel_id == self._channel(db, slug).id)
            if before_id is not None:
                query = query.where(StreamSession.id < before_id)  # type: ignore[operator]
            query = query.order_by(StreamSession.id.desc()).limit(limit)  # type: ignore[union-attr]
            return [(stream, channel) for stream, channel in db.exec(query)]

    def counts(self) -> dict[str, int]:
        """Totals for server status: channels, sessions, live (a segment out) and active ones."""
        with self.session() as db:
            channels = db.exec(select(func.count()).select_from(Channel)).one()
            by_state = dict(
                db.exec(
                    select(StreamSession.state, func.count()).group_by(StreamSession.state)
                ).all()
            )
        live = by_state.get(SessionState.LIVE, 0)
        return {
            "channels": channels,
            "sessions": sum(by_state.values()),
            "live_sessions": live,
            "active_sessions": live + by_state.get(SessionState.STARTING, 0),
        }

    def end_unfinished_sessions(self) -> list[int]:
        """At start-up: sessions a crashed server left open are ended now; their ids (the
        streams whose playlists the crash left open, see ``packager.recovery``)."""
        with self.session() as db:
            open_sessions = list(
                db.exec(select(StreamSession).where(StreamSession.state != SessionState.ENDED))
            )
            for stream in open_sessions:
                stream.state = SessionState.ENDED
                stream.ended_at = stream.ended_at or utcnow()
                stream.end_reason = stream.end_reason or "server stopped unexpectedly"
                db.add(stream)
            db.commit()
            return [stream.id for stream in open_sessions if stream.id is not None]

    # -- recordings (VOD) -------------------------------------------------------
    def save_recording(
        self,
        *,
        session_id: int,
        channel_id: int,
        prefix: str,
        storage: str,
        renditions: Iterable[str],
        duration_ms: int,
        segments: int,
        size_bytes: int,
        thumbnail: bool,
        retention_days: int,
    ) -> Recording:
        """Keep an ended stream as a VOD, or refresh its figures (idempotent by session: a
        retried end writes the same row again and keeps its creation time). Expires
        ``retention_days`` after creation (0: kept); the session points at its playlist."""
        for attempt in (1, 2):
            with self.session() as db:
                stream = db.get(StreamSession, session_id)
                if stream is None:
                    raise SessionNotFound(f"no stream session {session_id}")
                recording = db.get(Recording, session_id) or Recording(
                    session_id=session_id, channel_id=channel_id, created_at=utcnow()
                )
                recording.channel_id = channel_id
                recording.prefix = prefix
                recording.storage = storage
                recording.renditions = list(renditions)
                recording.duration_ms = max(0, int(duration_ms))
                recording.segments = max(0, int(segments))
                recording.size_bytes = max(0, int(size_bytes))
                recording.thumbnail = bool(thumbnail)
                recording.expires_at = (
                    recording.created_at + timedelta(days=retention_days)
                    if retention_days > 0
                    else None
                )
                stream.recording_location = f"/vod/{session_id}/master.m3u8"
                db.add(recording)
                db.add(stream)
                try:
                    db.commit()
                except IntegrityError:
                    if attempt == 2:
                        raise
                    continue  # a concurrent save inserted it first: update that row
                db.refresh(recording)
                return recording
        raise AssertionError("unreachable")

    def recordings(
        self,
        channel_id: int | None = None,
        *,
        limit: int | None = None,
        before_id: int | None = None,
    ) -> list[tuple[Recording, StreamSession, Channel]]:
        """VODs with their session and channel, newest first (all of them, or a page of
        ``limit``; the next page is ``before_id=<last id of this one>``)."""
        if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_PAGE):
            raise InvalidField("limit", f"invalid limit: an integer from 1 to {MAX_PAGE}")
        with self.session() as db:
            query = _vod_rows()
            if channel_id is not None:
                query = query.where(Recording.channel_id == channel_id)
            if before_id is not None:
                query = query.where(Recording.session_id < before_id)  # type: ignore[operator]
            query = query.order_by(Recording.session_id.desc())  # type: ignore[attr-defined]
            if limit is not None:
                query = query.limit(limit)
            return [(recording, stream, channel) for recording, stream, channel in db.exec(query)]

    def get_recording(self, session_id: int) -> tuple[Recording, StreamSession, Channel]:
        """One VOD with its session and channel; :class:`RecordingNotFound` if there is none."""
        with self.session() as db:
            row = db.exec(_vod_rows().where(Recording.session_id == session_id)).first()
        if row is None:
            raise RecordingNotFound(f"no VOD {session_id} (see `vilokanam vod list`)")
        return row[0], row[1], row[2]

    def delete_recording(self, session_id: int) -> Recording:
        """Forget a VOD (its media must be deleted first); the session stays in the history."""
        with self.session() as db:
            recording = db.get(Recording, session_id)
            if recording is None:
                raise RecordingNotFound(f"no VOD {session_id} (see `vilokanam vod list`)")
            stream = db.get(StreamSession, session_id)
            if stream is not None:
                stream.recording_location = None
                db.add(stream)
            db.delete(recording)
            db.commit()
        return recording

    def expired_recordings(self, now: datetime | None = None) -> list[Recording]:
        """VODs whose ``expires_at`` is at or before ``now``, oldest expiry first."""
        now = now or utcnow()
        with self.session() as db:
            query = (
                select(Recording)
                .where(Recording.expires_at != None)  # noqa: E711 - SQL IS NOT NULL
                .where(Recording.expires_at <= now)  # type: ignore[operator]
                .order_by(Recording.expires_at)  # type: ignore[arg-type]
            )
            return list(db.exec(query))

    def media_states(
        self, session_ids: Iterable[int], ended_before: datetime
    ) -> dict[int, MediaState]:
        """What may happen to the media folders of ``session_ids`` (see :class:`MediaState`)."""
        wanted = sorted(set(session_ids))
        states = dict.fromkeys(wanted, MediaState.UNKNOWN)
        with self.session() as db:
            for start in range(0, len(wanted), 500):  # bounded IN lists
                chunk = wanted[start : start + 500]
                columns = (StreamSession.state, StreamSession.ended_at, StreamSession.recorded)
                query = (
                    select(StreamSession.id, *columns, Recording.session_id)
                    .outerjoin(Recording, Recording.session_id == StreamSession.id)  # type: ignore[arg-type]
                    .where(StreamSession.id.in_(chunk))  # type: ignore[union-attr]
                )
                for session_id, state, ended_at, recorded, vod in db.exec(query):
                    states[session_id] = _media_state(state, ended_at, recorded, vod, ended_before)
        return states

    # -- viewers ----------------------------------------------------------------
    def create_viewer(self, name: str, address: str | None = None) -> tuple[Viewer, str]:
        """Create a viewer; returns it with its API key (``vk_…``, the only time it is shown)."""
        if not isinstance(name, str) or not valid_slug(name):
            raise InvalidField("name", f"invalid viewer name {name!r}: {SLUG_RULE}")
        key = "vk_" + secrets.token_urlsafe(24)
        viewer = Viewer(name=name, address=_address(address), key_hash=hash_stream_key(key))
        with self.session() as db:
            db.add(viewer)
            try:
                db.commit()
            except IntegrityError as exc:
                db.rollback()
                taken = f"name {name!r}" if self._viewer_named(db, name) else f"address {address!r}"
                raise ViewerExists(f"a viewer with {taken} already exists") from exc
            db.refresh(viewer)
        return viewer, key

    def get_viewer(self, name: str) -> Viewer:
        with self.session() as db:
            viewer = self._viewer_named(db, name)
        if viewer is None:
            raise ViewerNotFound(f"no viewer {name!r}")
        return viewer

    def get_viewer_by_id(self, viewer_id: int) -> Viewer:
        with self.session() as db:
            viewer = db.get(Viewer, viewer_id)
        if viewer is None:
            raise ViewerNotFound(f"no viewer with id {viewer_id}")
        return viewer

    def list_viewers(self) -> list[Viewer]:
        with self.session() as db:
            return list(db.exec(select(Viewer).order_by(Viewer.name)))

    def viewer_for_key(self, key: str) -> Viewer | None:
        """The viewer whose API key this is, or None (hash looked up, compared in constant time)."""
        if not key or not isinstance(key, str):
            return None
        with self.session() as db:
            viewer = db.exec(select(Viewer).where(Viewer.key_hash == hash_stream_key(key))).first()
        return viewer if viewer is not None and key_matches(key, viewer.key_hash) else None

    def viewer_for_address(self, address: str) -> Viewer | None:
        """The viewer who deposits from this chain address, or None."""
        if not address:
            return None
        with self.session() as db:
            return db.exec(select(Viewer).where(Viewer.address == address)).first()

    @staticmethod
    def _viewer_named(db: Session, name: str) -> Viewer | None:
        return db.exec(select(Viewer).where(Viewer.name == name)).first()


def _vod_rows() -> Any:
    """``SELECT recording, its session, its channel``."""
    return (
        select(Recording, StreamSession, Channel)
        .join(StreamSession, Recording.session_id == StreamSession.id)  # type: ignore[arg-type]
        .join(Channel, Recording.channel_id == Channel.id)  # type: ignore[arg-type]
    )


def _address(value: Any, field: str = "address") -> str | None:
    """A chain address: None, or an ss58 account address whose checksum holds (any network
    format; see :mod:`vilokanam.store.ss58`)."""
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else ""
    try:
        if not text or len(text) > MAX_ADDRESS:
            raise ValueError(f"1-{MAX_ADDRESS} base58 characters")
        ss58.decode(text)
    except ValueError as exc:
        raise InvalidField(
            field, f"invalid {field} {value!r}: not an ss58 account address ({exc})"
        ) from None
    return text
