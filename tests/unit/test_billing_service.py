"""The billing service: in-memory hot path, batched flushes, crash and restart, allowance."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit import test_ledger
from vilokanam.billing.ledger import Ledger
from vilokanam.billing.service import BillingService
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
