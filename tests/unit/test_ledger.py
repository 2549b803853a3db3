"""The ledger (and the store's viewers) on SQLite and PostgreSQL: double entry, idempotent keys,
integer fees, the clamp at zero, earnings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import SQLModel, select

from tests.postgres import create_database
from vilokanam.billing.ledger import Ledger, WatchCharge, split_fee
from vilokanam.store import InvalidField, Store, ViewerExists, ViewerNotFound, migrate
from vilokanam.store.models import (
    BatchState,
    EntryKind,
    LedgerEntry,
    SettlementBatch,
    utcnow,
)


@pytest.fixture(scope="session")
def billing_postgres_url(postgres_url: str) -> str:
    """One PostgreSQL database at head, emptied before each test that uses it."""
    url = create_database(postgres_url)
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store at the head revision on each backend."""
    if request.param == "postgresql":
        store = Store(request.getfixturevalue("billing_postgres_url"))
        tables = ", ".join(table.name for table in SQLModel.metadata.sorted_tables)
        with store.engine.begin() as connection:
            connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    else:
        store = Store(f"sqlite:///{tmp_path / 'data' / 'vilokanam.db'}")
    yield store
    store.close()


def _watch(ledger: Ledger, *charges: WatchCharge, fee_bps: int = 1000) -> list[int | None]:
    with ledger.store.session() as db:
        paid = ledger.post_watches(charges, fee_bps, db=db)
        db.commit()
    return paid


# -- entries -----------------------------------------------------------------------------------
def test_deposit_balance_and_idempotent_keys(store: Store) -> None:
    ledger = Ledger(store)
    assert ledger.viewer_balance(1) == 0
    assert ledger.deposit(1, 500, "dep:a") is True
    assert ledger.deposit(1, 500, "dep:a") is False, "the same key is credited once"
    assert ledger.deposit(1, 250, "dep:b") is True
    assert ledger.viewer_balance(1) == 750 and ledger.balance("deposits") == -750
    for bad in (0, -5, 1.5, True, "10"):
        with pytest.raises(ValueError, match="invalid deposit"):
            ledger.deposit(1, bad, "dep:bad")  # type: ignore[arg-type]
    [(entry, postings), _] = ledger.entries(viewer_id=1)
    assert entry.key == "dep:b" and entry.kind == EntryKind.DEPOSIT and entry.amount == 250
    assert sorted((p.account, p.amount) for p in postings) == [
        ("deposits", -250),
        ("viewer:1", 250),
    ]
    assert ledger.sum_of_all_postings() == 0


def test_post_entry_checks_the_postings(store: Store) -> None:
    ledger = Ledger(store)
    with pytest.raises(ValueError, match="sum to 0"):
        ledger.post_entry("x", EntryKind.PAYOUT, [("creator:1", -5), ("payouts", 4)])
    with pytest.raises(ValueError, match="integer"):
        ledger.post_entry("x", EntryKind.PAYOUT, [("creator:1", -0.5), ("payouts", 0.5)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="needs postings"):
        ledger.post_entry("x", EntryKind.PAYOUT, [])
    entry = ledger.post_entry(
        "payout:b1:1", EntryKind.PAYOUT, [("creator:1", -9), ("payouts", 9)], channel_id=1, amount=9
    )
    assert entry is not None and entry.id is not None and entry.channel_id == 1
    again = ledger.post_entry("payout:b1:1", EntryKind.PAYOUT, [("creator:1", -9), ("payouts", 9)])
    assert again is None and ledger.balance("payouts") == 9
    with store.session() as db:  # joins the caller's transaction: nothing until it commits
        ledger.post_entry("in-tx", EntryKind.PAYOUT, [("a", -1), ("b", 1)], db=db)
        assert ledger.post_entry("in-tx", EntryKind.PAYOUT, [("a", -1), ("b", 1)], db=db) is None
        db.rollback()
    assert ledger.balance("b") == 0
    assert ledger.sum_of_all_postings() == 0


def test_fees_are_integer_arithmetic() -> None:
    assert split_fee(21, 333) == (21, 0)  # 0.6993 rounds down to 0
    assert split_fee(10_000, 1) == (9_999, 1)
    assert split_fee(7 * 30_001, 2_500) == (157_506, 52_501)
    big = 3 * (10**17 + 7)
    assert split_fee(big, 1_000) == (big - big // 10, big // 10)
    assert split_fee(5, 0) == (5, 0) and split_fee(5, 10_000) == (0, 5)


def test_watch_postings_and_fee_rounding(store: Store) -> None:
    ledger = Ledger(store)
    ledger.deposit(1, 10**15, "dep:1")
    price = 10**12 + 1
    paid = _watch(
        ledger,
        WatchCharge(1, 3, 9, 0, 3, 7),  # 21 planck: fee 6.993 → 6
        WatchCharge(1, 3, 9, 3, 10, 30_001),  # 210_007: fee 69_932.331 → 69_932
        WatchCharge(1, 3, 9, 10, 11, 1),  # 1 planck: fee 0.333 → 0, no platform posting
        WatchCharge(1, 4, 10, 0, 4, price),
        fee_bps=3_330,
    )
    assert paid == [3, 7, 1, 4]
    assert ledger.balance("creator:3") == 15 + 140_075 + 1
    assert ledger.balance("platform") == 6 + 69_932 + (4 * price) * 3_330 // 10_000
    assert ledger.balance("creator:4") == 4 * price - (4 * price) * 3_330 // 10_000
    assert ledger.viewer_balance(1) == 10**15 - 21 - 210_007 - 1 - 4 * price
    entries = ledger.entries(session_id=9)
    assert [(e.key, e.seconds, e.amount) for e, _ in entries] == [
        ("watch:1:9:10-11", 1, 1),
        ("watch:1:9:3-10", 7, 210_007),
        ("watch:1:9:0-3", 3, 21),
    ]
    assert len(entries[0][1]) == 2 and len(entries[1][1]) == 3, "no zero posting for a 0 fee"
    assert _watch(ledger, WatchCharge(1, 3, 9, 3, 10, 30_001)) == [None], "idempotent"
    assert ledger.sum_of_all_postings() == 0


def test_clamp_at_zero_balance(store: Store) -> None:
    ledger = Ledger(store)
    ledger.deposit(5, 25, "dep:5")
    paid = _watch(
        ledger,
        WatchCharge(5, 1, 1, 0, 5, 7),  # 35 wanted, 25 there: 3 ticks (21)
        WatchCharge(5, 2, 2, 0, 1, 7),  # 4 left: nothing
        WatchCharge(6, 2, 2, 0, 1, 7),  # never deposited: nothing
    )
    assert paid == [3, 0, 0]
    assert ledger.viewer_balance(5) == 4 and ledger.viewer_balance(6) == 0
    assert [e.seconds for e, _ in ledger.entries() if e.kind == EntryKind.WATCH] == [3]
    assert ledger.sum_of_all_postings() == 0


def test_earnings_since_and_settled(store: Store) -> None:
    ledger = Ledger(store)
    ledger.deposit(1, 10_000, "dep:1")
    _watch(ledger, WatchCharge(1, 2, 7, 0, 10, 100), WatchCharge(1, 2, 8, 0, 5, 100))
    _watch(ledger, WatchCharge(1, 3, 9, 0, 5, 100))
    assert ledger.earnings(2) == {
        "channel_id": 2, "seconds": 15, "gross": 1_500, "fees": 150, "net": 1_350,
        "settled": 0, "unsettled": 1_350,
    }  # fmt: skip
    assert ledger.earnings(2, since=utcnow() + timedelta(minutes=1))["gross"] == 0
    assert ledger.earnings(2, since=utcnow() - timedelta(minutes=1))["seconds"] == 15
    unsettled = ledger.unsettled_watch_entries()
    assert [e.key for e in unsettled] == ["watch:1:7:0-10", "watch:1:8:0-5", "watch:1:9:0-5"]
    with store.session() as db:
        db.add(SettlementBatch(id="b1", state=BatchState.CONFIRMED, digest="0" * 64))
        entry = db.exec(select(LedgerEntry).where(LedgerEntry.key == "watch:1:7:0-10")).one()
        entry.batch_id = "b1"
        db.add(entry)
        db.commit()
    earned = ledger.earnings(2)
    assert (earned["settled"], earned["unsettled"]) == (900, 450)
    assert len(ledger.unsettled_watch_entries(limit=1)) == 1
    assert ledger.earnings(99)["net"] == 0


# -- viewers in the store ------------------------------------------------------------------------
def test_viewers(store: Store) -> None:
    viewer, key = store.create_viewer("alice", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY")
    assert key.startswith("vk_") and len(key) > 30 and key not in repr(viewer)
    assert store.viewer_for_key(key).id == viewer.id  # type: ignore[union-attr]
    assert store.viewer_for_key(key + "x") is None and store.viewer_for_key("") is None
    assert store.get_viewer("alice").id == store.get_viewer_by_id(viewer.id or 0).id
    bob, _ = store.create_viewer("bob")
    assert bob.address is None and [v.name for v in store.list_viewers()] == ["alice", "bob"]
    found = store.viewer_for_address("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY")
    assert found is not None and found.name == "alice"
    assert store.viewer_for_address("nobody") is None
    with pytest.raises(ViewerExists, match="name 'alice'"):
        store.create_viewer("alice")
    with pytest.raises(ViewerExists, match="address"):
        store.create_viewer("carol", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY")
    for name in ("A", "x", "has space", "-dash", 5):
        with pytest.raises(InvalidField):
            store.create_viewer(name)  # type: ignore[arg-type]
    for address in ("", "  ", "x" * 65, 7):
        with pytest.raises(InvalidField):
            store.create_viewer("dave", address)  # type: ignore[arg-type]
    with pytest.raises(ViewerNotFound):
        store.get_viewer("nobody")
    with pytest.raises(ViewerNotFound):
        store.get_viewer_by_id(999)
