"""Channel and history operations on the store, shaped as API bodies.

Synchronous and store-only (no event loop): the API handlers call it in a thread, and the CLI's
local mode calls it directly. Store errors (ChannelNotFound, ChannelExists, InvalidField…)
propagate for the caller to map or print.
"""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vilokanam.config import Settings
from vilokanam.config.urls import Urls
from vilokanam.hooks.outbox import enqueue_event
from vilokanam.origin.api.schemas import (
    BalanceOut,
    ChannelCreate,
    ChannelCreated,
    ChannelOut,
    ChannelUpdate,
    DepositIn,
    DepositOut,
    EarningsOut,
    LedgerEntryOut,
    LedgerQuery,
    PlaybackOut,
    PostingOut,
    RungIn,
    RungOut,
    SessionOut,
    StreamKeyOut,
    ViewerCreate,
    ViewerCreated,
    ViewerOut,
    VodOut,
)
from vilokanam.store import Channel, Store, StreamSession
from vilokanam.store.models import (
    EntryKind,
    LedgerEntry,
    Posting,
    Recording,
    SessionState,
    Viewer,
    utcnow,
)

if TYPE_CHECKING:
    from vilokanam.billing.ledger import Ledger


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
            record=body.record,
            vod_retention_days=body.vod_retention_days,
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
            payout_address=channel.payout_address,
            record=channel.record,
            vod_retention_days=channel.vod_retention_days,
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


# -- VODs ----------------------------------------------------------------------------------------
class VodService:
    """Listing recorded streams, shaped as API bodies (store-only, like ChannelService;
    deleting needs the media storage: :mod:`vilokanam.origin.vod`)."""

    def __init__(self, store: Store, urls: Urls) -> None:
        self.store = store
        self.urls = urls

    def list(
        self, channel: str | None = None, limit: int | None = None, before: int | None = None
    ) -> builtins.list[VodOut]:
        """VODs, newest first (a page: ``limit``, ids below ``before``); ``channel``: only that
        channel's (unknown: ChannelNotFound)."""
        channel_id = None if channel is None else self.store.get_channel(channel).id
        rows = self.store.recordings(channel_id, limit=limit, before_id=before)
        return [vod_out(*row, self.urls) for row in rows]

    def get(self, vod_id: int) -> VodOut:
        return vod_out(*self.store.get_recording(vod_id), self.urls)


def vod_out(recording: Recording, session: StreamSession, channel: Channel, urls: Urls) -> VodOut:
    """A recording as the API shows it, with absolute playback and poster URLs."""
    vod_id = recording.session_id
    return VodOut(
        id=vod_id,
        channel=channel.slug,
        title=channel.title,
        started_at=session.started_at,
        ended_at=session.ended_at,
        duration=recording.duration_ms / 1000,
        segments=recording.segments,
        size_bytes=recording.size_bytes,
        renditions=list(recording.renditions),
        storage=recording.storage,
        created_at=recording.created_at,
        expires_at=recording.expires_at,
        url=urls.vod(vod_id),
        thumbnail_url=urls.vod(vod_id, "thumbnail.jpg") if recording.thumbnail else None,
    )


# -- billing -----------------------------------------------------------------------------------
class BillingOps:
    """Viewers, deposits, playback tokens, earnings and the ledger, shaped as API bodies.

    Store- and ledger-only like :class:`ChannelService` (the API calls it in a thread, the CLI
    directly); the live counters of the running billing service are the API handlers' part.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        urls: Urls,
        secret: Callable[[], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.urls = urls
        self.secret = secret
        """The playback-token key, asked for only when a token is issued."""
        self.clock = clock

    @property
    def ledger(self) -> Ledger:
        from vilokanam.billing.ledger import Ledger

        return Ledger(self.store)

    # -- viewers ----------------------------------------------------------------
    def create_viewer(self, body: ViewerCreate) -> ViewerCreated:
        """Create a viewer; the response carries its key (``vk_…``), the only time it is shown."""
        viewer, key = self.store.create_viewer(body.name, body.address)
        return ViewerCreated(**viewer_out(viewer).model_dump(), viewer_key=key)

    def list_viewers(self) -> builtins.list[ViewerOut]:
        return [viewer_out(viewer) for viewer in self.store.list_viewers()]

    def viewer(self, name: str) -> Viewer:
        return self.store.get_viewer(name)

    def get_viewer(self, name: str) -> ViewerOut:
        return viewer_out(self.viewer(name))

    def deposit(self, name: str, body: DepositIn) -> DepositOut:
        """Credit the local ledger; a repeated ``reference`` is not credited twice."""
        viewer = self.viewer(name)
        assert viewer.id is not None
        reference = body.reference or f"once-{uuid.uuid4().hex}"
        key = f"deposit:{viewer.id}:{reference}"
        credited = self.ledger.deposit(viewer.id, body.amount, key)
        balance = self.ledger.viewer_balance(viewer.id)
        return DepositOut(
            viewer=viewer.name, amount=body.amount, credited=credited, balance=balance
        )

    def playback(self, viewer: Viewer, slug: str) -> PlaybackOut:
        """A signed master playlist URL letting ``viewer`` watch ``slug`` for ``token_ttl``."""
        from vilokanam.billing.tokens import issue

        assert viewer.id is not None
        channel = self.store.get_channel(slug)  # unknown: ChannelNotFound (404)
        expires = int(self.clock()) + self.settings.billing.token_ttl
        token = issue(self.secret(), viewer.id, channel.slug, expires)
        return PlaybackOut(
            url=f"{self.urls.playback(channel.slug)}?token={token}",
            token=token,
            expires_at=datetime.fromtimestamp(expires, UTC),
        )

    # -- channels and the ledger ----------------------------------------------
    def earnings(self, slug: str, since: datetime | None = None) -> EarningsOut:
        channel = self.store.get_channel(slug)
        assert channel.id is not None
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        totals = self.ledger.earnings(channel.id, since=since)
        return EarningsOut(
            channel=channel.slug,
            channel_id=channel.id,
            since=since,
            **{name: int(totals.get(name, 0)) for name in _EARNINGS},
        )

    def entries(self, query: LedgerQuery) -> builtins.list[LedgerEntryOut]:
        """Ledger entries with their postings, newest first, filtered by stream/viewer/channel."""
        viewer_id = channel_id = None
        if query.viewer is not None:
            viewer_id = self.viewer(query.viewer).id
        if query.channel is not None:
            channel_id = self.store.get_channel(query.channel).id
        rows = self.ledger.entries(
            session_id=query.stream, viewer_id=viewer_id, channel_id=channel_id, limit=query.limit
        )
        return [entry_out(entry, postings) for entry, postings in rows]


_EARNINGS = ("seconds", "gross", "fees", "net", "settled", "unsettled")


def viewer_out(viewer: Viewer) -> ViewerOut:
    assert viewer.id is not None
    return ViewerOut(
        id=viewer.id, name=viewer.name, address=viewer.address, created_at=viewer.created_at
    )


def entry_out(entry: LedgerEntry, postings: builtins.list[Posting]) -> LedgerEntryOut:
    assert entry.id is not None
    return LedgerEntryOut(
        id=entry.id,
        key=entry.key,
        kind=EntryKind(entry.kind).value,  # type: ignore[arg-type]
        viewer_id=entry.viewer_id,
        channel_id=entry.channel_id,
        session_id=entry.session_id,
        seconds=entry.seconds,
        amount=entry.amount,
        batch_id=entry.batch_id,
        created_at=entry.created_at,
        postings=[PostingOut(account=p.account, amount=p.amount) for p in postings],
    )


def balance_out(status: dict[str, Any], viewer: Viewer) -> BalanceOut:
    """The billing service's ``viewer_status`` as the API shows it."""
    return BalanceOut.model_validate({**status, "viewer_id": viewer.id, "viewer": viewer.name})


def offline_viewer_status(store: Store, settings: Settings, viewer: Viewer) -> BalanceOut:
    """A viewer's figures from the database alone (the CLI with no server running)."""
    from vilokanam.billing.service import BillingService

    assert viewer.id is not None
    service = BillingService(store, settings)
    asyncio.run(service.ensure_loaded(viewer.id))
    return balance_out(service.viewer_status(viewer.id), viewer)
