"""The billing service: in-memory hot path, batched flushes, crash and restart, allowance."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit import test_ledger
from vilokanam.billing.ledger import Ledger
from vilokanam.billing.service import STALE_BALANCE, BillingService
from vilokanam.config import Settings
from vilokanam.store import Channel, Store
from vilokanam.store.models import EntryKind, WatchState

T0 = 1_700_000_000.0
billing_postgres_url = test_ledger.billing_postgres_url
store = test_ledger.store  # the same store fixture: SQLite and PostgreSQL


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _settings(tmp_path: Path, **billing: Any) -> Settings:
    return Settings.model_validate({"data_dir": str(tmp_path), "billing": billing})


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'data' / 'vilokanam.db'}")
    yield store
    store.close()


def _live(store: Store, price: int = 10, slug: str = "news") -> tuple[Channel, int]:
    channel, _ = store.create_channel(slug, price_per_second=price)
    return channel, store.start_session(channel.id or 0).id or 0


def _watch(service: BillingService, clock: Clock, viewer: int, channel: Channel, session: int,
           sequences: range, duration: float = 2.0) -> None:  # fmt: skip
    """Fetch each sequence as it plays, in two renditions, with a retry."""
    for sequence in sequences:
        clock.now = T0 + sequence * duration
        for _ in range(3):
            service.note_fetch(viewer, channel, session, sequence, duration)


def _watch_seconds(ledger: Ledger, viewer: int) -> int:
    return sum(e.seconds for e, _ in ledger.entries(viewer_id=viewer) if e.kind == EntryKind.WATCH)


async def test_fetches_post_ticks_double_entry(store: Store, clock: Clock, tmp_path: Path) -> None:
    channel, session = _live(store, price=10)
    service = BillingService(store, _settings(tmp_path, platform_fee_bps=1000), clock=clock)
    service.ledger.deposit(1, 1_000, "dep:1")
    await service.ensure_loaded(1)
    assert service.allowance(1, channel) is None
    _watch(service, clock, 1, channel, session, range(5))
    status = service.viewer_status(1)
    assert (status["seconds_watched"], status["spent"], status["pending_spend"]) == (10, 100, 100)
    assert status["balance"] == 900
    assert await service.flush() == 1
    assert await service.flush() == 0, "nothing new"
    ledger = service.ledger
    assert ledger.viewer_balance(1) == 900 and ledger.balance(f"creator:{channel.id}") == 90
    assert ledger.balance("platform") == 10 and ledger.sum_of_all_postings() == 0
    [(entry, _)] = ledger.entries(session_id=session)
    assert entry.key == f"watch:1:{session}:0-10" and entry.seconds == 10
    assert service.viewer_status(1) == {
        "viewer_id": 1, "balance": 900, "pending_spend": 0, "seconds_watched": 10, "spent": 100,
        "sessions": [
            {"session_id": session, "channel_id": channel.id, "seconds": 10, "spent": 100}
        ],
    }  # fmt: skip
    with store.session() as db:
        state = db.get(WatchState, (1, session))
    assert state is not None and (state.ticks, state.content_ms, state.sequences) == (
        10, 10_000, [[0, 4]],
    )  # fmt: skip


async def test_free_channels_and_preview(sqlite_store: Store, clock: Clock, tmp_path: Path) -> None:
    free, free_session = _live(sqlite_store, price=0, slug="free")
    paid, paid_session = _live(sqlite_store, price=3, slug="paid")
    service = BillingService(sqlite_store, _settings(tmp_path, free_preview=4), clock=clock)
    service.ledger.deposit(1, 1_000, "dep:1")
    await service.ensure_loaded(1)
    assert service.allowance(2, free) is None, "a free channel needs no balance"
    _watch(service, clock, 2, free, free_session, range(10))
    assert len(service.tracker) == 0 and await service.flush() == 0
    _watch(service, clock, 1, paid, paid_session, range(5))  # 10 s, 4 free
    await service.flush()
    assert _watch_seconds(service.ledger, 1) == 6 and service.ledger.viewer_balance(1) == 982
    with sqlite_store.session() as db:
        assert db.get(WatchState, (2, free_session)) is None


async def test_flushes_at_most_once_per_interval(
    sqlite_store: Store, clock: Clock, tmp_path: Path
) -> None:
    channel, session = _live(sqlite_store)
    service = BillingService(sqlite_store, _settings(tmp_path, flush_interval=0.1), clock=clock)
    service.ledger.deposit(1, 10**9, "dep:1")
    await service.start()
    loop = asyncio.get_running_loop()
    began = loop.time()
    for sequence in range(50):
        _watch(service, clock, 1, channel, session, range(sequence, sequence + 1))
        await asyncio.sleep(0.01)
    elapsed = loop.time() - began
    assert 1 <= service.flushes <= elapsed / 0.1 + 1
    await service.stop()
    assert _watch_seconds(service.ledger, 1) == 100, "every tick posted once, in batches"
    assert len(service.ledger.entries(viewer_id=1, limit=1000)) - 1 == service.flushes


async def test_crash_loses_at_most_the_unflushed_and_never_double_counts(
    store: Store, clock: Clock, tmp_path: Path
) -> None:
    channel, session = _live(store)
    settings = _settings(tmp_path)
    first = BillingService(store, settings, clock=clock)
    first.ledger.deposit(1, 10**6, "dep:1")
    await first.start()
    await first.ensure_loaded(1)
    _watch(first, clock, 1, channel, session, range(5))
    await first.flush()
    _watch(first, clock, 1, channel, session, range(5, 7))  # not flushed: lost in the crash
    assert first._task is not None
    first._task.cancel()  # the crash: no final flush
    await asyncio.gather(first._task, return_exceptions=True)
    assert _watch_seconds(first.ledger, 1) == 10

    second = BillingService(store, settings, clock=clock)
    await second.start()  # restores the open session's watch state
    await second.ensure_loaded(1)
    _watch(second, clock, 1, channel, session, range(7))  # the player retries everything
    assert await second.flush() == 1
    assert _watch_seconds(second.ledger, 1) == 14, "the replay credits only what was lost"
    _watch(second, clock, 1, channel, session, range(7))
    assert await second.flush() == 0
    assert second.viewer_status(1)["seconds_watched"] == 14
    await second.stop()

    third = BillingService(store, settings, clock=clock)  # memory lost, state not restored
    _watch(third, clock, 1, channel, session, range(9))
    await third.flush()
    assert _watch_seconds(third.ledger, 1) == 18, "the flush merges with the saved state"
    assert third.ledger.viewer_balance(1) == 10**6 - 180
    assert third.ledger.sum_of_all_postings() == 0


async def test_allowance_and_clamp_when_funds_run_out(
    sqlite_store: Store, clock: Clock, tmp_path: Path
) -> None:
    channel, session = _live(sqlite_store, price=10)
    service = BillingService(sqlite_store, _settings(tmp_path), clock=clock)
    assert service.allowance(1, channel) is not None, "unknown balance: not yet"
    service.ledger.deposit(1, 45, "dep:1")
    await service.ensure_loaded(1)
    assert service.allowance(1, channel) is None
    _watch(service, clock, 1, channel, session, range(2))  # 4 s pending: 40 of 45
    reason = service.allowance(1, channel)
    assert reason is not None and reason.startswith("insufficient balance: 5 planck left")
    _watch(service, clock, 1, channel, session, range(2, 4))  # a flush behind: 8 s watched
    await service.flush()
    assert service.ledger.viewer_balance(1) == 5, "clamped: 4 of 8 ticks paid, never below 0"
    assert _watch_seconds(service.ledger, 1) == 4
    assert service.allowance(1, channel) is not None
    assert service.viewer_status(1)["balance"] == 5

    service.ledger.deposit(1, 100, "dep:2")
    service.invalidate(1)
    await service.ensure_loaded(1)
    assert service.allowance(1, channel) is None
    _watch(service, clock, 1, channel, session, range(4, 6))
    await service.flush()
    assert _watch_seconds(service.ledger, 1) == 8, "written-off ticks are not charged later"
    assert service.ledger.viewer_balance(1) == 65


async def test_a_deposit_made_elsewhere_unlocks_a_refused_viewer(
    sqlite_store: Store, clock: Clock, tmp_path: Path
) -> None:
    """The balance is cached; a refusal on a cached balance older than STALE_BALANCE marks it
    stale, so the gate's next ensure_loaded reads a deposit another process wrote."""
    channel, _ = _live(sqlite_store, price=10)
    service = BillingService(sqlite_store, _settings(tmp_path), clock=clock)
    await service.ensure_loaded(1)
    assert service.allowance(1, channel) is not None, "no balance: refused"
    Ledger(sqlite_store).deposit(1, 1_000, "chain:0xabc")  # another process (the watcher)
    await service.ensure_loaded(1)
    assert service.allowance(1, channel) is not None, "fresh cache: not read again yet"
    clock.now += STALE_BALANCE + 0.1
    assert service.allowance(1, channel) is not None, "this refusal marks the balance stale"
    await service.ensure_loaded(1)  # the gate's next request
    assert service.allowance(1, channel) is None
    assert service.viewer_status(1)["balance"] == 1_000

    service.ledger.deposit(2, 5, "dep:2")  # too little for 1 s: stays refused, read once per
    await service.ensure_loaded(2)  # window, not on every request
    reads = 0
    real = service._read_viewer

    def counting(viewer_id: int, with_watches: bool) -> Any:
        nonlocal reads
        reads += 1
        return real(viewer_id, with_watches)

    service._read_viewer = counting  # type: ignore[method-assign]
    for _ in range(20):
        await service.ensure_loaded(2)
        assert service.allowance(2, channel) is not None
    assert reads == 0
    clock.now += STALE_BALANCE + 0.1
    for _ in range(20):
        await service.ensure_loaded(2)
        assert service.allowance(2, channel) is not None
    assert reads == 1


async def test_invalidate_reads_the_balance_at_once(
    sqlite_store: Store, clock: Clock, tmp_path: Path
) -> None:
    """What the deposit watcher's on_credit callback does (wired in the app)."""
    channel, _ = _live(sqlite_store, price=10)
    service = BillingService(sqlite_store, _settings(tmp_path), clock=clock)
    await service.ensure_loaded(1)
    assert service.allowance(1, channel) is not None
    Ledger(sqlite_store).deposit(1, 1_000, "chain:0xdef")
    service.invalidate(1)
    await service.ensure_loaded(1)
    assert service.allowance(1, channel) is None


async def test_free_preview_needs_no_balance(
    sqlite_store: Store, clock: Clock, tmp_path: Path
) -> None:
    """billing.free_preview=4 with 2 s segments: a viewer with no balance gets the first two
    segments of each session (and its playlists) free, then 402; nothing is charged."""
    channel, session = _live(sqlite_store, price=10)
    service = BillingService(sqlite_store, _settings(tmp_path, free_preview=4), clock=clock)
    await service.ensure_loaded(1)
    assert service.allowance(1, channel, None) is None, "master, no stream known: in preview"
    served = []
    for sequence in range(5):  # fetched as fast as the player likes: the preview counts fetches
        if service.allowance(1, channel, session) is not None:
            break
        service.note_fetch(1, channel, session, sequence, 2.0)
        served.append(sequence)
    assert served == [0, 1]
    reason = service.allowance(1, channel, session)
    assert reason is not None and reason.startswith("insufficient balance")
    other = sqlite_store.start_session(channel.id or 0).id or 0  # a new session: a new preview
    assert service.allowance(1, channel, other) is None
    clock.now += 10
    service.note_watching(1, channel, session)  # the capped content is credited
    await service.flush()
    assert service.ledger.viewer_balance(1) == 0 and _watch_seconds(service.ledger, 1) == 0
    assert service.allowance(1, channel, session) is not None, "preview used up"

    free = BillingService(sqlite_store, _settings(tmp_path), clock=clock)  # no preview
    await free.ensure_loaded(2)
    assert free.allowance(2, channel, session) is not None


async def test_ticks_past_the_preview_are_charged_then_refused(
    sqlite_store: Store, clock: Clock, tmp_path: Path
) -> None:
    channel, session = _live(sqlite_store, price=10)
    service = BillingService(sqlite_store, _settings(tmp_path, free_preview=4), clock=clock)
    service.ledger.deposit(1, 30, "dep:1")  # 3 s after the preview
    await service.ensure_loaded(1)
    sequence = 0
    while service.allowance(1, channel, session) is None and sequence < 10:
        clock.now = T0 + sequence * 2.0
        service.note_fetch(1, channel, session, sequence, 2.0)
        sequence += 1
    assert sequence == 4, "2 free segments, then 2 paid (the second only partly)"
    await service.flush()
    assert _watch_seconds(service.ledger, 1) == 3 and service.ledger.viewer_balance(1) == 0
    assert service.allowance(1, channel, session) is not None


async def test_two_servers_flushing_at_once_never_double_charge(
    postgres_db_url: str, clock: Clock, tmp_path: Path
) -> None:
    """Two BillingServices on one PostgreSQL database with overlapping fetches of one (viewer,
    session) flush concurrently (threads), both from stale saved states: the flush lock is
    taken before the states are read, so the ticks posted are the distinct content."""
    one, two = Store(postgres_db_url), Store(postgres_db_url)  # migrated on open
    try:
        channel, session = _live(one, price=10)
        settings = _settings(tmp_path)
        first = BillingService(one, settings, clock=clock)
        second = BillingService(two, settings, clock=clock)
        first.ledger.deposit(1, 10**6, "dep:1")
        for service in (first, second):
            await service.ensure_loaded(1)
        _watch(first, clock, 1, channel, session, range(5))  # 10 s
        await first.flush()  # the saved state: 10 ticks
        _watch(first, clock, 1, channel, session, range(5, 10))  # ticks 10-20
        _watch(second, clock, 1, channel, session, range(12))  # ticks 0-24: overlaps both

        for service in (first, second):  # both read the saved states, then wait a moment
            read = service._saved_states

            def slow(db: Any, keys: Any, read: Any = read) -> Any:
                found = read(db, keys)
                time.sleep(0.3)  # the other flush reads (stale, without the lock) meanwhile
                return found

            service._saved_states = slow  # type: ignore[method-assign]
        await asyncio.gather(first.flush(), second.flush())
        ledger = Ledger(one)
        assert _watch_seconds(ledger, 1) == 24, "12 distinct 2 s segments, each posted once"
        assert ledger.viewer_balance(1) == 10**6 - 240 and ledger.sum_of_all_postings() == 0
        with one.session() as db:
            state = db.get(WatchState, (1, session))
        assert state is not None and state.ticks == 24 and state.sequences == [[0, 11]]
    finally:
        one.close()
        two.close()


def test_the_app_wires_chain_deposits_to_invalidate(tmp_path: Path) -> None:
    """A deposit the chain watcher credits re-reads the viewer's balance at once."""
    pytest.importorskip("substrateinterface")
    from vilokanam.app import VilokanamServer

    seed = tmp_path / "escrow-seed"
    seed.write_text("//Alice")
    settings = Settings.model_validate(
        {
            "data_dir": str(tmp_path),
            "billing": {"settlement": "substrate"},
            "chain": {"url": "ws://127.0.0.1:1", "escrow_seed_file": str(seed)},
        }
    )
    server = VilokanamServer(settings, echo=lambda _: None)
    try:
        assert server.deposit_watcher is not None
        assert server.deposit_watcher.on_credit == server.billing.invalidate
    finally:
        server.store.close()


async def test_stop_during_a_slow_flush_posts_every_tick_once(
    sqlite_store: Store, clock: Clock, tmp_path: Path
) -> None:
    """stop() while the flush loop is writing: the write finishes, nothing is posted twice."""
    import threading

    channel, session = _live(sqlite_store)
    service = BillingService(sqlite_store, _settings(tmp_path, flush_interval=0.1), clock=clock)
    service.ledger.deposit(1, 10**9, "dep:1")
    await service.start()
    writing = threading.Event()
    real_write = service._write

    def slow_write(work: Any) -> Any:
        writing.set()
        time.sleep(0.5)
        return real_write(work)

    service._write = slow_write  # type: ignore[method-assign]
    _watch(service, clock, 1, channel, session, range(5))
    await asyncio.to_thread(writing.wait, 5)
    _watch(service, clock, 1, channel, session, range(5, 8))  # due while the write is running
    await service.stop()  # must not cancel the write and race a second flush against it
    assert _watch_seconds(service.ledger, 1) == 16
    assert service.ledger.sum_of_all_postings() == 0
