"""Settlement batches on SQLite: claiming entries, digest, payouts, confirm/fail, recovery logic."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from vilokanam.billing.ledger import Ledger
from vilokanam.billing.settlement.batches import (
    batch_digest,
    batch_entries,
    batch_remark,
    confirm_batch,
    fail_batch,
    pending_batches,
    prepare_batch,
)
from vilokanam.billing.settlement.chain import ChainError, Found, Submission
from vilokanam.billing.settlement.local import LocalSettlement
from vilokanam.billing.settlement.substrate import SubstrateSettlement
from vilokanam.store.models import BatchState, Channel, EntryKind, LedgerEntry
from vilokanam.store.store import Store

FEE_BPS = 1000


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'billing.db'}")


def make_channel(store: Store, slug: str, address: str | None) -> int:
    channel, _ = store.create_channel(slug)
    with store.session() as db:
        row = db.get(Channel, channel.id)
        assert row is not None
        row.payout_address = address
        db.add(row)
        db.commit()
    assert channel.id is not None
    return channel.id


def watch(ledger: Ledger, viewer_id: int, channel_id: int, n: int, seconds: int, price: int) -> int:
    """Post a watch entry: the viewer pays ``seconds * price``; returns the creator's part."""
    gross = seconds * price
    fee = gross * FEE_BPS // 10_000
    entry = ledger.post_entry(
        f"watch:{viewer_id}:{channel_id}:{n}",
        EntryKind.WATCH,
        [
            (f"viewer:{viewer_id}", -gross),
            (f"creator:{channel_id}", gross - fee),
            ("platform", fee),
        ],
        viewer_id=viewer_id,
        channel_id=channel_id,
        session_id=1,
        seconds=seconds,
        amount=gross,
    )
    assert entry is not None
    return gross - fee


def test_digest_is_sha256_of_sorted_lines_whatever_the_order() -> None:
    a = LedgerEntry(key="watch:b", kind=EntryKind.WATCH, seconds=2, amount=20)
    b = LedgerEntry(key="watch:a", kind=EntryKind.WATCH, seconds=1, amount=10)
    expected = hashlib.sha256(b"watch:a\t1\t10\nwatch:b\t2\t20\n").hexdigest()
    assert batch_digest([a, b]) == batch_digest([b, a]) == expected


def test_prepare_claims_entries_of_paid_channels_only(store: Store) -> None:
    ledger = Ledger(store)
    paid, unpaid = make_channel(store, "paid", "addr-paid"), make_channel(store, "unpaid", None)
    viewer, _ = store.create_viewer("alice")
    assert viewer.id is not None
    creator = sum(watch(ledger, viewer.id, paid, n, 10, 7) for n in range(3))
    watch(ledger, viewer.id, unpaid, 0, 5, 7)

    batch = prepare_batch(store, backend="substrate", require_address=True)
    assert batch is not None and batch.state == BatchState.PREPARED
    entries = batch_entries(store, batch.id)
    assert [e.channel_id for e in entries] == [paid] * 3
    assert batch.digest == batch_digest(entries)
    assert batch.ticks == 30
    assert batch.payouts == [{"channel_id": paid, "address": "addr-paid", "amount": creator}]
    assert batch_remark(batch) == f"vilokanam:batch:{batch.id}:{batch.digest}".encode()
    assert [b.id for b in pending_batches(store, "substrate")] == [batch.id]
    # nothing left for a second batch; the unpaid channel's entry stays unsettled
    assert prepare_batch(store, backend="substrate", require_address=True) is None
    assert [e.channel_id for e in ledger.unsettled_watch_entries()] == [unpaid]


def test_small_payouts_wait_for_the_minimum(store: Store) -> None:
    ledger = Ledger(store)
    channel = make_channel(store, "tiny", "addr")
    viewer, _ = store.create_viewer("bob")
    assert viewer.id is not None
    watch(ledger, viewer.id, channel, 0, 1, 10)  # creator gets 9
    assert prepare_batch(store, backend="substrate", require_address=True, min_payout=50) is None
    for n in range(1, 6):
        watch(ledger, viewer.id, channel, n, 1, 10)
    batch = prepare_batch(store, backend="substrate", require_address=True, min_payout=50)
    assert batch is not None and batch.payouts[0]["amount"] == 54


def test_local_settlement_confirms_at_once_without_payouts(store: Store) -> None:
    ledger = Ledger(store)
    channel = make_channel(store, "local", None)
    viewer, _ = store.create_viewer("carol")
    assert viewer.id is not None
    net = watch(ledger, viewer.id, channel, 0, 4, 100)
    summary = LocalSettlement(store).settle()
    assert summary["state"] == "confirmed" and summary["ticks"] == 4
    assert ledger.unsettled_watch_entries() == []
    earnings = ledger.earnings(channel)
    assert (earnings["settled"], earnings["unsettled"]) == (net, 0)
    assert ledger.balance("payouts") == 0
    assert LocalSettlement(store).settle()["state"] == "empty"


def test_confirm_posts_payouts_once_and_fail_frees_entries(store: Store) -> None:
    ledger = Ledger(store)
    channel = make_channel(store, "creator", "addr")
    viewer, _ = store.create_viewer("dave")
    assert viewer.id is not None
    ledger.deposit(viewer.id, 10_000, "deposit:test")
    net = watch(ledger, viewer.id, channel, 0, 10, 10)

    failed = prepare_batch(store, backend="substrate", require_address=True)
    assert failed is not None
    fail_batch(store, failed.id, "extrinsic failed: test")
    assert len(ledger.unsettled_watch_entries()) == 1

    batch = prepare_batch(store, backend="substrate", require_address=True)
    assert batch is not None and batch.digest == failed.digest
    for _ in range(2):
        confirm_batch(store, ledger, batch.id, extrinsic_hash="0x1", block_hash="0x2")
    assert ledger.balance(f"creator:{channel}") == 0
    assert ledger.balance("payouts") == net
    assert ledger.sum_of_all_postings() == 0
    assert pending_batches(store, "substrate") == []


class StubClient:
    """Our ChainClient's surface, scripted: records what was submitted."""

    def __init__(self, *, found: bool = False, down: bool = False, success: bool = True) -> None:
        self.found, self.down, self.success = found, down, success
        self.submitted: list[Any] = []

    def _check(self) -> None:
        if self.down:
            raise ChainError("connection refused")

    def existential_deposit(self) -> int:
        self._check()
        return 1

    def has_tick_stream(self) -> bool:
        self._check()
        return False

    def find_remark(self, remark: bytes, depth: int) -> Found | None:
        self._check()
        return Found("0xb", 7, 2, "0xe") if self.found else None

    def escrow_has_pending(self) -> bool:
        return False

    def compose_batch(self, payouts: Any, remark: bytes, ticks: Any) -> Any:
        return (payouts, remark)

    def sign(self, call: Any) -> Any:
        return call

    @staticmethod
    def extrinsic_hash(extrinsic: Any) -> str:
        return "0xe"

    def submit(self, extrinsic: Any) -> Submission:
        self._check()
        self.submitted.append(extrinsic)
        return Submission(self.success, "0xe", "0xb", 7, 1, None if self.success else "boom")

    def close(self) -> None:
        pass


def test_pending_batch_is_looked_up_before_any_retry(store: Store) -> None:
    ledger = Ledger(store)
    channel = make_channel(store, "chan", "addr")
    viewer, _ = store.create_viewer("erin")
    assert viewer.id is not None
    watch(ledger, viewer.id, channel, 0, 3, 10)

    down = StubClient(down=True)
    summary = SubstrateSettlement(store, ledger, lambda: down).settle()
    assert summary["state"] == "prepared" and "chain unavailable" in summary["error"]

    on_chain = StubClient(found=True)
    summary = SubstrateSettlement(store, ledger, lambda: on_chain).settle()
    assert summary["recovered"][0]["state"] == "confirmed"
    assert on_chain.submitted == []  # found: never sent again

    watch(ledger, viewer.id, channel, 1, 3, 10)
    refused = StubClient(success=False)
    summary = SubstrateSettlement(store, ledger, lambda: refused).settle()
    assert summary["state"] == "failed" and len(refused.submitted) == 1
    assert len(ledger.unsettled_watch_entries()) == 1
