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
    get_batch,
    pending_batches,
    prepare_batch,
)
from vilokanam.billing.settlement.chain import (
    BatchInvalid,
    ChainError,
    Inclusion,
    Submission,
    remark_hash,
)
from vilokanam.billing.settlement.local import LocalSettlement
from vilokanam.billing.settlement.substrate import SubstrateSettlement
from vilokanam.store.models import BatchState, Channel, EntryKind, LedgerEntry, SettlementBatch
from vilokanam.store.store import Store

FEE_BPS = 1000
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"


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
    paid, unpaid = make_channel(store, "paid", ALICE), make_channel(store, "unpaid", None)
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
    assert batch.payouts == [{"channel_id": paid, "address": ALICE, "amount": creator}]
    assert batch_remark(batch) == f"vilokanam:batch:{batch.id}:{batch.digest}".encode()
    assert [b.id for b in pending_batches(store, "substrate")] == [batch.id]
    # nothing left for a second batch; the unpaid channel's entry stays unsettled
    assert prepare_batch(store, backend="substrate", require_address=True) is None
    assert [e.channel_id for e in ledger.unsettled_watch_entries()] == [unpaid]


def test_small_payouts_wait_for_the_minimum(store: Store) -> None:
    ledger = Ledger(store)
    channel = make_channel(store, "tiny", ALICE)
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
    channel = make_channel(store, "creator", ALICE)
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
    """Our ChainClient's surface, scripted: an escrow nonce, records what was signed and sent.

    ``include``: a submission is included (the nonce moves on); ``found``: what ``find_nonce``
    answers for an included extrinsic (default: the last one submitted, if any)."""

    def __init__(
        self,
        *,
        down: bool = False,
        success: bool = True,
        nonce: int = 0,
        pool: int = 0,
        genesis: str = "0xgenesis",
        found: Inclusion | bool | None = True,
        invalid: bool = False,
    ) -> None:
        self.down, self.success, self.nonce, self.pool = down, success, nonce, pool
        self.genesis, self.found, self.invalid = genesis, found, invalid
        self.signed: list[int] = []
        self.submitted: list[Any] = []
        self.lookups: list[tuple[int, int]] = []

    def _check(self) -> None:
        if self.down:
            raise ChainError("connection refused")

    def genesis_hash(self) -> str:
        self._check()
        return self.genesis

    def existential_deposit(self) -> int:
        self._check()
        return 1

    def has_tick_stream(self) -> bool:
        self._check()
        return False

    def escrow_nonce(self) -> int:
        self._check()
        return self.nonce

    def escrow_next_nonce(self) -> int:
        self._check()
        return self.nonce + self.pool

    def finalized_number(self) -> int:
        return 100

    def find_nonce(self, nonce: int, start: int) -> Inclusion | None:
        self.lookups.append((nonce, start))
        if isinstance(self.found, Inclusion) or self.found is None:
            return self.found
        return Inclusion(True, "0xb", 7, 2, "0xe", None, (self.remark_hash,))

    def compose_batch(self, payouts: Any, remark: bytes, ticks: Any) -> Any:
        if self.invalid:
            raise BatchInvalid("cannot compose the batch: NotImplementedError()")
        self.remark_hash = remark_hash(remark)
        return (payouts, remark)

    def sign(self, call: Any, nonce: int) -> Any:
        self.signed.append(nonce)
        return call

    @staticmethod
    def extrinsic_hash(extrinsic: Any) -> str:
        return "0xe"

    def submit(self, extrinsic: Any) -> Submission:
        self._check()
        self.submitted.append(extrinsic)
        self.nonce += 1
        return Submission(self.success, "0xe", "0xb", 7, 1, None if self.success else "boom")

    def close(self) -> None:
        pass


class Killed(BaseException):
    """kill -9 right after the submission left."""


def submitted_then_killed(store: Store, ledger: Ledger, client: StubClient) -> SettlementBatch:
    """A batch sent with the client's nonce, the settler killed before it learnt the outcome."""
    settlement = SubstrateSettlement(store, ledger, lambda: client)

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    settlement._confirm = killed  # type: ignore[method-assign]
    with pytest.raises(Killed):
        settlement.settle()
    [batch] = pending_batches(store, "substrate")
    assert batch.state == BatchState.SUBMITTED
    return batch


def funded(store: Store) -> tuple[Ledger, int, int]:
    ledger = Ledger(store)
    channel = make_channel(store, "chan", ALICE)
    viewer, _ = store.create_viewer("erin")
    assert viewer.id is not None
    watch(ledger, viewer.id, channel, 0, 3, 10)
    return ledger, viewer.id, channel


def test_unreachable_chain_keeps_the_batch_prepared_then_sends_it(store: Store) -> None:
    ledger, _, _ = funded(store)
    summary = SubstrateSettlement(store, ledger, lambda: StubClient(down=True)).settle()
    assert summary["state"] == "prepared" and "chain unavailable" in summary["error"]

    up = StubClient(nonce=4)
    summary = SubstrateSettlement(store, ledger, lambda: up).settle()
    assert summary["recovered"][0]["state"] == "confirmed" and up.signed == [4]
    batch = get_batch(store, summary["recovered"][0]["batch_id"])
    assert batch is not None
    assert (batch.nonce, batch.genesis_hash, batch.submitted_block) == (4, "0xgenesis", 100)


def test_included_batch_is_found_by_its_nonce_however_long_ago(store: Store) -> None:
    """The reviewer's double payment: the settler dies after submitting and the chain moves on
    for longer than any look-back window; the batch's nonce is used, so it is never sent again."""
    ledger, _, _ = funded(store)
    client = StubClient(nonce=7)
    batch = submitted_then_killed(store, ledger, client)
    assert (batch.nonce, batch.submitted_block, client.nonce) == (7, 100, 8)

    summary = SubstrateSettlement(store, ledger, lambda: client).settle()
    assert summary["recovered"][0]["state"] == "confirmed" and summary["state"] == "empty"
    assert client.lookups == [(7, 100)]  # from the submission's height on, no depth cap
    assert len(client.submitted) == 1  # never sent again
    assert ledger.balance("payouts") > 0 and ledger.sum_of_all_postings() == 0


def test_used_nonce_not_found_holds_the_batch_for_an_operator(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    ledger, _, _ = funded(store)
    client = StubClient(nonce=3)
    submitted_then_killed(store, ledger, client)
    client.found = None
    for _ in range(2):
        summary = SubstrateSettlement(store, ledger, lambda: client).settle()
        assert summary["state"] == "submitted" and "escrow nonce 3 is used" in summary["error"]
    assert len(client.submitted) == 1
    assert any(r.levelname == "ERROR" and "operator" in r.message for r in caplog.records)


def test_included_but_failed_batch_fails_and_frees_its_entries(store: Store) -> None:
    ledger, _, _ = funded(store)
    client = StubClient(nonce=3)
    submitted_then_killed(store, ledger, client)
    client.found = Inclusion(False, "0xb", 7, 2, "0xe", "InsufficientBalance")
    summary = SubstrateSettlement(store, ledger, lambda: client).settle()
    assert summary["recovered"][0]["state"] == "failed"
    assert "InsufficientBalance" in summary["recovered"][0]["error"]
    assert len(ledger.unsettled_watch_entries()) == 1 and len(client.submitted) == 1


def test_not_included_batch_is_sent_again_with_the_same_nonce(store: Store) -> None:
    ledger, _, _ = funded(store)
    client = StubClient(nonce=5)
    submitted_then_killed(store, ledger, client)
    client.nonce = 5  # the extrinsic never made it (dropped from the pool)

    client.pool = 1  # ... unless it still waits in the pool: then wait
    summary = SubstrateSettlement(store, ledger, lambda: client).settle()
    assert summary["state"] == "submitted" and "in flight" in summary["error"]
    client.pool = 0
    summary = SubstrateSettlement(store, ledger, lambda: client).settle()
    assert summary["recovered"][0]["state"] == "confirmed"
    assert client.signed == [5, 5] and len(client.submitted) == 2


def test_batch_of_another_chain_or_a_nonce_ahead_is_not_resubmitted(store: Store) -> None:
    ledger, _, _ = funded(store)
    client = StubClient(nonce=5)
    submitted_then_killed(store, ledger, client)
    client.nonce, client.genesis = 0, "0xother"
    summary = SubstrateSettlement(store, ledger, lambda: client).settle()
    assert summary["state"] == "submitted" and "another chain" in summary["error"]
    client.genesis = "0xgenesis"  # same chain, but the escrow's nonce is behind the batch's
    summary = SubstrateSettlement(store, ledger, lambda: client).settle()
    assert summary["state"] == "submitted" and "below the batch's" in summary["error"]
    assert len(client.submitted) == 1


def test_refused_batch_fails_and_the_next_waits_longer_each_time(store: Store) -> None:
    ledger, viewer_id, channel = funded(store)
    now = [1000.0]
    refused = StubClient(success=False)
    settlement = SubstrateSettlement(store, ledger, lambda: refused, clock=lambda: now[0])
    summary = settlement.settle()
    assert summary["state"] == "failed" and "boom" in summary["error"]
    assert len(ledger.unsettled_watch_entries()) == 1
    summary = settlement.settle()  # doomed: not tried again at once
    assert summary["state"] == "empty" and summary["backoff_s"] == 60
    now[0] += 61
    assert settlement.settle()["state"] == "failed"
    assert settlement.settle()["backoff_s"] == 120  # doubled
    now[0] += 121
    refused.success = True
    assert settlement.settle()["state"] == "confirmed"
    watch(ledger, viewer_id, channel, 1, 3, 10)
    assert settlement.settle()["state"] == "confirmed"  # success resets the wait
    assert len(refused.submitted) == 4


def test_batch_that_cannot_be_composed_fails_instead_of_stalling(store: Store) -> None:
    ledger, _, _ = funded(store)
    client = StubClient(invalid=True)
    summary = SubstrateSettlement(store, ledger, lambda: client).settle()
    assert summary["state"] == "failed" and "cannot compose" in summary["error"]
    assert client.submitted == [] and len(ledger.unsettled_watch_entries()) == 1


def test_invalid_payout_address_is_left_out_and_others_settle(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(store)
    bad = make_channel(store, "bad-address", "1" * 47)
    good = make_channel(store, "good", BOB)
    viewer, _ = store.create_viewer("frank")
    assert viewer.id is not None
    watch(ledger, viewer.id, bad, 0, 5, 10)
    net = watch(ledger, viewer.id, good, 0, 5, 10)
    batch = prepare_batch(store, backend="substrate", require_address=True)
    assert batch is not None
    assert batch.payouts == [{"channel_id": good, "address": BOB, "amount": net}]
    assert [e.channel_id for e in ledger.unsettled_watch_entries()] == [bad]
    assert any("bad-address" in r.getMessage() for r in caplog.records)


def test_minimum_payout_counts_all_unsettled_entries_of_a_channel(store: Store) -> None:
    """A small channel whose entries fill the first ``limit`` does not block the others."""
    ledger = Ledger(store)
    small, big = make_channel(store, "small", ALICE), make_channel(store, "big", BOB)
    viewer, _ = store.create_viewer("gina")
    assert viewer.id is not None
    for n in range(4):
        watch(ledger, viewer.id, small, n, 1, 10)  # 9 each, 36 in all: below 50
    owed = sum(watch(ledger, viewer.id, big, n, 10, 10) for n in range(2))
    batch = prepare_batch(store, backend="substrate", require_address=True, min_payout=50, limit=4)
    assert batch is not None
    assert batch.payouts == [{"channel_id": big, "address": BOB, "amount": owed}]
    # and a channel owed enough in all is paid even when a batch holds only part of it
    for n in range(4, 6):
        watch(ledger, viewer.id, small, n, 1, 10)  # 54 in all
    batch = prepare_batch(store, backend="substrate", require_address=True, min_payout=50, limit=6)
    assert batch is not None and batch.payouts[0]["amount"] == 54
