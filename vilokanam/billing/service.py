"""The billing service: fetch events in memory, ticks flushed to the ledger in batches.

One per server. The hot path (:meth:`BillingService.note_fetch`, :meth:`~BillingService.allowance`)
touches only memory; a background task flushes every ``billing.flush_interval`` seconds. Each
flush is ONE transaction holding the watch entries and the updated ``WatchState`` rows, so a crash
loses at most the ticks since the last flush and never posts a tick twice: on restart the saved
states are restored and the same fetches credit nothing again.

A flush merges with what the database holds (ticks and content: the larger; sequences: the
union), so even a state that memory lost or never loaded (evicted, another server) cannot post a
tick range twice. Ticks a viewer's balance cannot pay are written off, never posted below zero;
the gate's :meth:`~BillingService.allowance` stops the viewer before that matters.

Balances change outside this service (a deposit through the API, the chain's deposit watcher,
another server): :meth:`~BillingService.invalidate` re-reads one at once, and a refusal on a
cached balance older than ``STALE_BALANCE`` seconds marks it stale, so the gate's next
:meth:`~BillingService.ensure_loaded` reads it again from the ledger.

The free preview (``billing.free_preview`` seconds of each stream session) is not billed and
needs no balance: :meth:`~BillingService.allowance` lets a viewer the balance would refuse
through while the content it fetched of the session is still within the preview.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, tuple_
from sqlmodel import Session, select

from vilokanam.billing.ledger import Ledger, WatchCharge, viewer_account
from vilokanam.billing.tracker import Due, Fetch, Tracker
from vilokanam.config import Settings
from vilokanam.store import Channel, SessionState, Store, StreamSession
from vilokanam.store.models import EntryKind, LedgerEntry, WatchState, utcnow

log = logging.getLogger(__name__)

CHUNK = 400  # (viewer, session) pairs per IN (...) list
IDLE_EVICT = 600.0
"""Seconds after its last fetch that a saved watch state leaves memory (reloaded on return)."""
UPDATED = ("first_fetch_at", "content_ms", "pending_ms", "ticks", "sequences", "updated_at")
STALE_BALANCE = 5.0
"""Seconds after which a cached balance that refuses a viewer is read again from the ledger."""
RECENT = timedelta(days=1)
"""Watch states of ended sessions touched this recently are loaded with a viewer (VOD)."""


@dataclass(slots=True)
class _Figures:
    """What one viewer paid for one session, as posted to the ledger."""

    channel_id: int | None
    seconds: int = 0
    spent: int = 0


@dataclass(slots=True)
class _Viewer:
    balance: int = 0
    """Ledger balance (planck) as last read or as the last flush left it."""
    balance_known: bool = False
    balance_at: float = 0.0
    """Clock time the balance was last read from the ledger."""
    watches_loaded: bool = False
    out_of_funds: bool = False
    sessions: dict[int, _Figures] = field(default_factory=dict)


@dataclass(slots=True)
class _Load:
    balance: int
    figures: dict[int, _Figures]
    states: list[tuple[WatchState, int | None, int | None]]  # state, channel id, price


@dataclass(slots=True)
class _Flushed:
    accounted: dict[tuple[int, int], int]
    paid: list[tuple[WatchCharge, int | None]]
    balances: dict[int, int]


def _ranges_union(*lists: Sequence[Sequence[int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for start, end in sorted((int(r[0]), int(r[1])) for ranges in lists for r in ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class BillingService:
    """Tracker + ledger + balances for the gate and the API; see the module docstring."""

    def __init__(
        self, store: Store, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.ledger = Ledger(store)
        self.settings = settings
        self.fee_bps = settings.billing.platform_fee_bps
        self.flush_interval = settings.billing.flush_interval
        self.tracker = Tracker(
            float(math.ceil(settings.hls.segment_duration)), settings.billing.free_preview
        )
        self.flushes = 0
        """Flush transactions written so far (tests and metrics)."""
        self._clock = clock
        self._viewers: dict[int, _Viewer] = {}
        self._sessions: dict[int, tuple[int, int]] = {}  # session → (channel id, price)
        self._loads: dict[int, asyncio.Future[None]] = {}
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Restore the watch states of sessions still open, then flush every interval."""
        states = await asyncio.to_thread(self._load_open_states)
        self._restore(states)
        self._task = asyncio.create_task(self._run(), name="billing-flush")

    async def stop(self) -> None:
        """Stop the flush loop and flush what is pending."""
        if self._task is not None:
            # Never cancel a flush mid-write: its thread would still commit while a second
            # flush, started below, read the same saved states.
            async with self._flush_lock:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("billing flush failed; ticks stay pending and are retried")
            for viewer_id, _session_id in self.tracker.evict_idle(self._clock() - IDLE_EVICT):
                viewer = self._viewers.get(viewer_id)
                if viewer is not None:
                    viewer.watches_loaded = False

    # -- hot path ---------------------------------------------------------------------------
    def note_fetch(
        self,
        viewer_id: int,
        channel: Channel,
        session_id: int,
        sequence: int,
        duration: float,
        at: float | None = None,
    ) -> None:
        """One valid segment fetch at ``at`` (wall seconds; None: now, a CDN log line: its time).
        O(1), no I/O; a free channel is not tracked at all."""
        price = channel.price_per_second
        if price <= 0:
            return
        known = self._sessions.get(session_id)
        if known is None or known[1] != price:
            self._sessions[session_id] = (channel.id or 0, price)
        viewer = self._viewers.get(viewer_id)
        if viewer is None:
            viewer = self._viewers[viewer_id] = _Viewer()
        if session_id not in viewer.sessions:
            viewer.sessions[session_id] = _Figures(channel.id)
        when = self._clock() if at is None else at
        self.tracker.note(Fetch(viewer_id, session_id, sequence, duration, when))

    def note_watching(
        self, viewer_id: int, channel: Channel, session_id: int, at: float | None = None
    ) -> None:
        """A playlist fetch (at ``at``; None: now): the viewer is still watching, so content it
        fetched ahead of the wall-clock cap is credited as far as time then allows. O(1)."""
        if channel.price_per_second > 0:
            when = self._clock() if at is None else at
            self.tracker.release(viewer_id, session_id, when)

    def allowance(
        self, viewer_id: int, channel: Channel, session_id: int | None = None
    ) -> str | None:
        """None if the viewer may fetch from ``channel``; else why not (the gate answers 402).

        ``session_id``: the stream session the request is for (None: not known, e.g. a master
        playlist with no stream), for the free preview. A refusal on a cached balance older
        than ``STALE_BALANCE`` seconds marks it stale (read again by the next
        :meth:`ensure_loaded`): deposits made elsewhere unlock the viewer."""
        price = channel.price_per_second
        if price <= 0:
            return None
        viewer = self._viewers.get(viewer_id)
        if viewer is None or not viewer.balance_known:
            return "insufficient balance: balance not loaded yet, try again"
        remaining = viewer.balance - self._pending_spend(viewer_id, viewer)
        if remaining >= price:
            return None
        if self.tracker.preview_ms > 0 and self._in_preview(viewer_id, session_id):
            return None
        if self._clock() - viewer.balance_at > STALE_BALANCE:
            viewer.balance_known = False  # a timestamp compare; the read is ensure_loaded's
        return (
            f"insufficient balance: {max(remaining, 0)} planck left, this channel costs "
            f"{price} planck per second"
        )

    def _in_preview(self, viewer_id: int, session_id: int | None) -> bool:
        """Whether the content the viewer fetched of ``session_id`` (credited, or waiting under
        the wall-clock cap) is still short of the free preview; True for no session."""
        if session_id is None:
            return True  # nothing fetched can be counted against it (no stream to serve)
        state = self.tracker.state(viewer_id, session_id)
        fetched = 0 if state is None else state.content_ms + state.pending_ms
        return fetched < self.tracker.preview_ms

    def invalidate(self, viewer_id: int) -> None:
        """The viewer's balance changed outside this service (a deposit): read it again."""
        viewer = self._viewers.get(viewer_id)
        if viewer is not None:
            viewer.balance_known = False
            viewer.out_of_funds = False

    async def ensure_loaded(self, viewer_id: int) -> None:
        """Load the viewer's balance, posted figures and recent watch states (off the loop);
        immediate when they are in memory already."""
        viewer = self._viewers.get(viewer_id)
        if viewer is not None and viewer.balance_known and viewer.watches_loaded:
            return
        future = self._loads.get(viewer_id)
        if future is None:
            future = self._loads[viewer_id] = asyncio.ensure_future(self._load(viewer_id))
            future.add_done_callback(lambda _: self._loads.pop(viewer_id, None))
        await asyncio.shield(future)

    async def _load(self, viewer_id: int) -> None:
        viewer = self._viewers.setdefault(viewer_id, _Viewer())
        with_watches = not viewer.watches_loaded
        loaded = await asyncio.to_thread(self._read_viewer, viewer_id, with_watches)
        viewer.balance = loaded.balance
        viewer.balance_known = True
        viewer.balance_at = self._clock()
        if with_watches:
            for session_id, figures in loaded.figures.items():
                viewer.sessions[session_id] = figures
            self._restore(loaded.states)
            viewer.watches_loaded = True

    def _pending_spend(self, viewer_id: int, viewer: _Viewer) -> int:
        total = 0
        for session_id in viewer.sessions:
            ticks = self.tracker.unposted(viewer_id, session_id)
            if ticks:
                total += ticks * self._sessions.get(session_id, (0, 0))[1]
        return total

    def viewer_status(self, viewer_id: int) -> dict[str, Any]:
        """The live counter: balance after pending spend, seconds and planck posted + pending."""
        viewer = self._viewers.get(viewer_id) or _Viewer()
        sessions = []
        seconds = spent = pending = 0
        for session_id, figures in sorted(viewer.sessions.items()):
            channel_id, price = self._sessions.get(session_id, (figures.channel_id, 0))
            ticks = self.tracker.unposted(viewer_id, session_id)
            sessions.append(
                {
                    "session_id": session_id,
                    "channel_id": channel_id,
                    "seconds": figures.seconds + ticks,
                    "spent": figures.spent + ticks * price,
                }
            )
            seconds += figures.seconds + ticks
            spent += figures.spent + ticks * price
            pending += ticks * price
        return {
            "viewer_id": viewer_id,
            "balance": viewer.balance - pending,
            "pending_spend": pending,
            "seconds_watched": seconds,
            "spent": spent,
            "sessions": sessions,
        }

    # -- flushing ---------------------------------------------------------------------------
    async def flush(self) -> int:
        """Post what is pending now in one transaction; returns the watch entries written."""
        async with self._flush_lock:
            work: list[tuple[Due, tuple[int, int] | None]] = []
            for due in self.tracker.pending():
                channel = self._sessions.get(due.session_id)
                if channel is None and due.ticks_to > due.ticks_from:
                    continue  # restored with ticks due but no channel seen yet: wait for one
                work.append((due, channel))
            if not work:
                return 0
            flushed = await asyncio.to_thread(self._write, work)
            self.flushes += 1
            for due, _ in work:
                key = (due.viewer_id, due.session_id)
                self.tracker.mark_posted(*key, flushed.accounted[key], version=due.version)
            written = 0
            for charge, paid in flushed.paid:
                if paid is None:
                    continue
                viewer = self._viewers.setdefault(charge.viewer_id, _Viewer())
                if paid > 0:
                    written += 1
                    figures = viewer.sessions.setdefault(
                        charge.session_id, _Figures(charge.channel_id)
                    )
                    figures.seconds += paid
                    figures.spent += paid * charge.price
                if paid < charge.ticks_to - charge.ticks_from:
                    viewer.out_of_funds = True
                    log.info(
                        "viewer %s out of funds: %s of %s ticks written off",
                        charge.viewer_id,
                        charge.ticks_to - charge.ticks_from - paid,
                        charge.ticks_to - charge.ticks_from,
                    )
            for viewer_id, balance in flushed.balances.items():
                viewer = self._viewers.get(viewer_id)
                if viewer is not None and viewer.balance_known:
                    viewer.balance = balance
                    viewer.balance_at = self._clock()
            return written

    def _write(self, work: list[tuple[Due, tuple[int, int] | None]]) -> _Flushed:
        """In a thread: one transaction with the watch entries and the watch states."""
        keys = [(due.viewer_id, due.session_id) for due, _ in work]
        table = WatchState.__table__  # type: ignore[attr-defined]
        with self.store.session() as db:
            # Serialise flushes across servers BEFORE reading the saved states: read after
            # another server's flush committed, they hold its ticks (READ COMMITTED), so two
            # servers never post overlapping tick ranges of one (viewer, session).
            self.ledger.lock_watch_flushes(db)
            saved = self._saved_states(db, keys)
            charges: list[WatchCharge] = []
            accounted: dict[tuple[int, int], int] = {}
            for (due, channel), key in zip(work, keys, strict=True):
                row = saved.get(key)
                start = max(due.ticks_from, row.ticks if row else 0)
                accounted[key] = max(due.ticks_to, start)
                if channel is not None and due.ticks_to > start:
                    charges.append(
                        WatchCharge(key[0], channel[0], key[1], start, due.ticks_to, channel[1])
                    )
            paid = self.ledger.post_watches(charges, self.fee_bps, db=db)
            now = utcnow()
            inserts, updates = [], []
            for due, _ in work:
                key = (due.viewer_id, due.session_id)
                row = saved.get(key)
                values = {
                    "first_fetch_at": _stamp(due.first_fetch_at),
                    "content_ms": due.content_ms,
                    "pending_ms": due.pending_ms,
                    "ticks": accounted[key],
                    "sequences": due.sequences,
                    "updated_at": now,
                }
                if row is None:
                    inserts.append({"viewer_id": key[0], "session_id": key[1], **values})
                    continue
                values["first_fetch_at"] = min(values["first_fetch_at"], row.first_fetch_at)
                if row.content_ms > due.content_ms:  # another writer got further: keep its state
                    values["pending_ms"] = row.pending_ms
                values["content_ms"] = max(due.content_ms, row.content_ms)
                values["sequences"] = _ranges_union(row.sequences, due.sequences)
                updates.append(
                    {"b_viewer": key[0], "b_session": key[1]}
                    | {f"b_{name}": value for name, value in values.items()}
                )
            connection = db.connection()
            if inserts:
                connection.execute(table.insert(), inserts)
            if updates:
                connection.execute(
                    table.update()
                    .where(
                        table.c.viewer_id == bindparam("b_viewer"),
                        table.c.session_id == bindparam("b_session"),
                    )
                    .values({name: bindparam(f"b_{name}") for name in UPDATED}),
                    updates,
                )
            balances = self.ledger.balances(
                {viewer_account(charge.viewer_id) for charge in charges}, db=db
            )
            db.commit()
        by_viewer = {int(account.split(":", 1)[1]): value for account, value in balances.items()}
        return _Flushed(accounted, list(zip(charges, paid, strict=True)), by_viewer)

    @staticmethod
    def _saved_states(db: Session, keys: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
        table = WatchState.__table__  # type: ignore[attr-defined]
        saved = {}
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            rows = db.connection().execute(
                table.select().where(tuple_(table.c.viewer_id, table.c.session_id).in_(chunk))
            )
            for row in rows:
                saved[(row.viewer_id, row.session_id)] = row
        return saved

    # -- loading ----------------------------------------------------------------------------
    def _restore(self, states: list[tuple[WatchState, int | None, int | None]]) -> None:
        for state, channel_id, price in states:
            key = (state.viewer_id, state.session_id)
            if (
                channel_id is not None
                and price is not None
                and state.session_id not in self._sessions
            ):
                self._sessions[state.session_id] = (channel_id, price)
            viewer = self._viewers.setdefault(state.viewer_id, _Viewer())
            viewer.sessions.setdefault(state.session_id, _Figures(channel_id))
            if key in self.tracker:
                continue  # memory is newer (a fetch came first); the flush merges
            self.tracker.restore(
                state.viewer_id,
                state.session_id,
                first_fetch_at=state.first_fetch_at.timestamp(),
                content_ms=state.content_ms,
                ticks=state.ticks,
                sequences=state.sequences,
                pending_ms=state.pending_ms,
            )

    def _states_query(self) -> Any:
        return (
            select(WatchState, Channel.id, Channel.price_per_second)
            .outerjoin(StreamSession, StreamSession.id == WatchState.session_id)  # type: ignore[arg-type]
            .outerjoin(Channel, Channel.id == StreamSession.channel_id)  # type: ignore[arg-type]
        )

    def _load_open_states(self) -> list[tuple[WatchState, int | None, int | None]]:
        with self.store.session() as db:
            query = self._states_query().where(StreamSession.state != SessionState.ENDED)
            return [tuple(row) for row in db.exec(query)]  # type: ignore[misc]

    def _read_viewer(self, viewer_id: int, with_watches: bool) -> _Load:
        balance = self.ledger.viewer_balance(viewer_id)
        if not with_watches:
            return _Load(balance, {}, [])
        cutoff = utcnow() - RECENT
        with self.store.session() as db:
            figures = {
                session_id: _Figures(channel_id, int(seconds), int(spent))
                for session_id, channel_id, seconds, spent in db.exec(
                    select(
                        LedgerEntry.session_id,
                        LedgerEntry.channel_id,
                        _sum(LedgerEntry.seconds),
                        _sum(LedgerEntry.amount),
                    )
                    .where(LedgerEntry.viewer_id == viewer_id, LedgerEntry.kind == EntryKind.WATCH)
                    .group_by(LedgerEntry.session_id, LedgerEntry.channel_id)
                )
                if session_id is not None
            }
            query = self._states_query().where(
                WatchState.viewer_id == viewer_id,
                or_(
                    StreamSession.state != SessionState.ENDED,  # type: ignore[arg-type]
                    StreamSession.id.is_(None),  # type: ignore[union-attr]
                    WatchState.updated_at >= cutoff,  # type: ignore[arg-type,operator]
                ),
            )
            states = [tuple(row) for row in db.exec(query)]
        return _Load(balance, figures, states)  # type: ignore[arg-type]


def _sum(column: Any) -> Any:
    return func.coalesce(func.sum(column), 0)
