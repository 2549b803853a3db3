"""Channel and history operations on the store, shaped as API bodies.

Synchronous and store-only (no event loop): the API handlers call it in a thread, and the CLI's
local mode calls it directly. Store errors (ChannelNotFound, ChannelExists, InvalidField…)
propagate for the caller to map or print.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from vilokanam.config import Settings
from vilokanam.config.urls import Urls
from vilokanam.hooks.outbox import enqueue_event
from vilokanam.origin.api.schemas import (
    ChannelCreate,
    ChannelCreated,
    ChannelOut,
    ChannelUpdate,
    RungIn,
    RungOut,
    SessionOut,
    StreamKeyOut,
)
from vilokanam.store import Channel, Store, StreamSession
from vilokanam.store.models import SessionState, utcnow


def _no_live_slugs() -> set[str]:
    return set()


class ChannelService:
    """Everything the operator API and CLI do with channels and past sessions."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        urls: Urls,
        live_slugs: Callable[[], set[str]] = _no_live_slugs,
    ) -> None:
        self.store = store
        self.settings = settings
        self.urls = urls
        self.live_slugs = live_slugs
        """Slugs streaming now (the server's stream manager); empty in the CLI's local mode."""

    # -- channels -------------------------------------------------------------
    def create(self, body: ChannelCreate) -> ChannelCreated:
        """Create a channel; the response carries its stream key, the only time it is shown."""
        channel, key = self.store.create_channel(
            body.slug,
            body.title,
            category=body.category,
            tags=tuple(body.tags),
            price_per_second=body.price_per_second,
            ladder=_ladder_dicts(body.ladder),
        )
        return ChannelCreated(**self._out(channel, live=False).model_dump(), stream_key=key)

    def list(self) -> builtins.list[ChannelOut]:
        live = self.live_slugs()
        return [self._out(c, live=c.slug in live) for c in self.store.list_channels()]

    def get(self, slug: str) -> ChannelOut:
        return self._out(self.store.get_channel(slug))

    def update(self, slug: str, body: ChannelUpdate) -> ChannelOut:
        """Change only the fields present in ``body``; ``ladder=None`` clears the override."""
        changes = body.changes()
        if "tags" in changes:
            changes["tags"] = tuple(changes["tags"])
        if "ladder" in changes:
            changes["ladder"] = _ladder_dicts(body.ladder)
        if not changes:
            return self.get(slug)
        return self._out(self.store.update_channel(slug, **changes))

    def delete(self, slug: str) -> ChannelOut:
        """Delete from the store only; a live stream must be ended first (the API does)."""
        return self._out(self.store.delete_channel(slug), live=False)

    def rotate_key(self, slug: str) -> StreamKeyOut:
        """A new key; the old one stops working for new publishes. Queues channel.key_rotated."""
        key = self.store.rotate_key(slug)
        channel = self.store.get_channel(slug)
        enqueue_event(
            self.store,
            self.settings,
            "channel.key_rotated",
            {
                "channel": channel.slug,
                "channel_id": channel.id,
                "rotated_at": channel.key_rotated_at.isoformat(),
            },
        )
        return StreamKeyOut(
            channel=slug,
            stream_key=key,
            rtmp_url=self.urls.rtmp_server,
            playback_url=self.urls.playback(slug),
        )

    def revoke_key(self, slug: str) -> ChannelOut:
        """No key works for the channel until the next rotation."""
        return self._out(self.store.revoke_key(slug))

    # -- history --------------------------------------------------------------
    def history(
        self, channel: str | None = None, limit: int = 50, before: int | None = None
    ) -> builtins.list[SessionOut]:
        """Stream sessions, newest first; ``before`` pages on by session id."""
        rows = self.store.history(channel, limit=limit, before_id=before)
        return [session_out(session, ch) for session, ch in rows]

    def session(self, session_id: int) -> SessionOut:
        return session_out(*self.store.get_session(session_id))

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    # -- shaping --------------------------------------------------------------
    def _out(self, channel: Channel, live: bool | None = None) -> ChannelOut:
        assert channel.id is not None
        if live is None:
            live = channel.slug in self.live_slugs()
        return ChannelOut(
            id=channel.id,
            slug=channel.slug,
            title=channel.title,
            category=channel.category,
            tags=list(channel.tags),
            price_per_second=channel.price_per_second,
            ladder=None if channel.ladder is None else [RungOut(**r) for r in channel.ladder],
            key_active=channel.stream_key_hash is not None,
            key_rotated_at=channel.key_rotated_at,
            created_at=channel.created_at,
            updated_at=channel.updated_at,
            live=live,
            rtmp_url=self.urls.rtmp_server,
            playback_url=self.urls.playback(channel.slug),
            watch_url=self.urls.watch_page(channel.slug),
        )


def _ladder_dicts(ladder: list[RungIn] | None) -> list[dict[str, Any]] | None:
    return None if ladder is None else [rung.model_dump() for rung in ladder]


def session_out(session: StreamSession, channel: Channel) -> SessionOut:
    """A stream session as the API shows it (duration until now while not ended)."""
    assert session.id is not None
    end = session.ended_at or (None if session.state is SessionState.ENDED else utcnow())
    duration = None if end is None else max(0.0, (end - session.started_at).total_seconds())
    return SessionOut(
        id=session.id,
        channel=channel.slug,
        state=SessionState(session.state).value,  # type: ignore[arg-type]
        started_at=session.started_at,
        live_at=session.live_at,
        ended_at=session.ended_at,
        duration_seconds=duration,
        segments=session.segments,
        peak_viewers=session.peak_viewers,
        publisher=session.publisher,
        end_reason=session.end_reason,
        recording_location=session.recording_location,
    )
