"""Substrate settlement: one ``Utility.batch_all`` from the escrow per batch, paid exactly once.

Order of work for a batch: prepared (row + claimed entries, no chain needed) → submitted (written
before the extrinsic leaves) → confirmed (found on chain: state + payout entries in one
transaction) or failed (the chain refused it: entries freed). A batch still prepared or submitted
when a settlement starts — after a crash, a timeout or a lost connection — is looked up on chain
first, by the escrow nonce recorded with it before it first left (with the chain's genesis hash and
the finalized height then):

* the escrow's finalized nonce is past the batch's → an extrinsic with that nonce was included:
  it is looked up in the finalized blocks from that height on → confirmed, or failed (entries
  freed); not found → the batch stays submitted and an operator is asked (never resubmitted);
* the finalized nonce equals it and nothing of the escrow waits in the pool → the extrinsic was
  not included: the same batch is signed again with the SAME nonce and sent — at most one
  extrinsic with a given nonce can ever be included, so it cannot pay twice;
* another chain (genesis differs), or the escrow's nonce below the batch's → the batch waits and
  an operator is asked.

An unreachable chain leaves the batch pending; ticks keep accruing in the ledger. A batch that
cannot be composed (a bad address) or that the chain refused fails; after a failure the next batch
waits, doubling the wait up to ``backoff_cap``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlmodel import col, select

from vilokanam.billing.ledger import Ledger
from vilokanam.billing.settlement.batches import (
    PENDING,
    batch_entries,
    batch_remark,
    confirm_batch,
    fail_batch,
    get_batch,
    mark_submitted,
    pending_batches,
    prepare_batch,
    set_error,
    summarize,
)
from vilokanam.billing.settlement.chain import (
    BatchInvalid,
    ChainClient,
    ChainError,
    Inclusion,
    TickRecord,
    remark_hash,
)
from vilokanam.store.models import BatchState, SettlementBatch, Viewer
from vilokanam.store.store import Store

log = logging.getLogger(__name__)


class SubstrateSettlement:
    name = "substrate"

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        client_factory: Callable[[], ChainClient],
        *,
        backoff_base: float = 60.0,
        backoff_cap: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self._client_factory = client_factory
        self._client: ChainClient | None = None
        self._min_payout = 0
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._clock = clock
        self._failures = 0
        self._next_batch_at = 0.0

    @property
    def client(self) -> ChainClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def settle(self) -> dict[str, Any]:
        """Resolve pending batches, then settle new entries; the summary of the last batch."""
        recovered: list[dict[str, Any]] = []
        for pending in pending_batches(self.store, self.name):
            batch = self.resolve(pending, fresh=False)
            if batch.state in PENDING:  # outcome still unknown: nothing new until it is known
                return summarize(batch, recovered=recovered)
            recovered.append(summarize(batch))
        wait = self._next_batch_at - self._clock()
        if wait > 0:  # the last batch failed: give the operator time (funds, addresses)
            return summarize(None, recovered=recovered, backoff_s=round(wait))
        self._learn_min_payout()
        batch = prepare_batch(
            self.store, backend=self.name, require_address=True, min_payout=self._min_payout
        )
        if batch is None:
            return summarize(None, recovered=recovered)
        return summarize(self.resolve(batch, fresh=True), recovered=recovered)

    def _learn_min_payout(self) -> None:
        """The existential deposit (a smaller payout to a new account would fail the batch)."""
        if self._min_payout:
            return
        try:
            self._min_payout = self.client.existential_deposit()
        except ChainError as exc:
            log.info("settlement: chain unreachable, preparing without the minimum: %s", exc)

    def resolve(self, batch: SettlementBatch, *, fresh: bool) -> SettlementBatch:
        """Settle ``batch`` as it stands: look it up by its nonce when it was sent before, send
        it (again, with the same nonce) when it was not; returns the batch as it now stands.
        ``fresh`` (just prepared) is kept for callers: a batch without a nonce was never sent."""
        assert batch.id is not None
        try:
            client = self.client
            genesis = client.genesis_hash()
            if batch.nonce is None and batch.state == BatchState.SUBMITTED:
                return self._hold(batch, "submitted without a recorded nonce: check on chain")
            if batch.nonce is not None:
                if batch.genesis_hash and batch.genesis_hash != genesis:
                    return self._hold(
                        batch,
                        f"submitted to another chain (genesis "
                        f"{batch.genesis_hash}, connected to {genesis}); "
                        "not resubmitted",
                    )
                settled = self._lookup(client, batch)
                if settled is not None:
                    return settled
                nonce = batch.nonce
                log.info("settlement: batch %s not included; sending it again with nonce %d",
                         batch.id, nonce)  # fmt: skip
            else:
                nonce = client.escrow_next_nonce()
            ticks = self._tick_records(batch) if client.has_tick_stream() else None
            payouts = [(str(p["address"]), int(p["amount"])) for p in batch.payouts]
            try:
                extrinsic = client.sign(
                    client.compose_batch(payouts, batch_remark(batch), ticks), nonce
                )
            except BatchInvalid as exc:
                if batch.nonce is not None:  # it composed before: keep it, never free it
                    return self._hold(batch, f"cannot sign it again: {exc}")
                log.error("settlement: batch %s cannot be sent: %s", batch.id, exc)
                return self._failed(batch, str(exc))
            mark_submitted(
                self.store,
                batch.id,
                client.extrinsic_hash(extrinsic),
                nonce=nonce,
                genesis_hash=genesis,
                submitted_block=client.finalized_number(),
            )
            submission = client.submit(extrinsic)
        except ChainError as exc:
            log.warning("settlement: batch %s pending, chain unavailable: %s", batch.id, exc)
            set_error(self.store, batch.id, f"chain unavailable: {exc}")
            return get_batch(self.store, batch.id) or batch
        if submission.success:
            log.info("settlement: batch %s confirmed in block %d (fee %d)",
                     batch.id, submission.block_number, submission.fee)  # fmt: skip
            return self._confirm(batch.id, submission.extrinsic_hash, submission.block_hash)
        return self._failed(batch, f"extrinsic failed: {submission.error}")

    def _lookup(self, client: ChainClient, batch: SettlementBatch) -> SettlementBatch | None:
        """The batch resolved by its nonce, or held; None when it was not included (and is not
        on its way): then it may be sent again with the same nonce."""
        assert batch.id is not None and batch.nonce is not None
        on_chain = client.escrow_nonce()
        if on_chain > batch.nonce:  # an extrinsic with the batch's nonce is in a finalized block
            start = batch.submitted_block or 0
            found = client.find_nonce(batch.nonce, start)
            if found is None:
                return self._hold(
                    batch,
                    f"escrow nonce {batch.nonce} is used on chain but no "
                    f"extrinsic with it in finalized blocks {start}..head; "
                    "not resubmitted",
                )
            return self._included(batch, found)
        if client.escrow_next_nonce() > batch.nonce:
            set_error(self.store, batch.id, "the escrow's extrinsic is in flight; waiting")
            return get_batch(self.store, batch.id) or batch
        if on_chain < batch.nonce:
            return self._hold(
                batch,
                f"escrow nonce on chain ({on_chain}) below the batch's "
                f"({batch.nonce}): earlier escrow extrinsics are missing "
                "(chain reset?); not resubmitted",
            )
        return None

    def _included(self, batch: SettlementBatch, found: Inclusion) -> SettlementBatch:
        assert batch.id is not None
        if not found.success:
            return self._failed(
                batch, f"extrinsic failed in block {found.block_number}: {found.error}"
            )
        if found.remarks and remark_hash(batch_remark(batch)) not in found.remarks:
            return self._hold(
                batch,
                f"the extrinsic with nonce {batch.nonce} in block "
                f"{found.block_number} carries another batch's remark",
            )
        log.info("settlement: batch %s found on chain in block %d: confirmed",
                 batch.id, found.block_number)  # fmt: skip
        return self._confirm(batch.id, found.extrinsic_hash, found.block_hash)

    def _hold(self, batch: SettlementBatch, error: str) -> SettlementBatch:
        """Keep ``batch`` pending with ``error``: only an operator can tell what happened."""
        assert batch.id is not None
        log.error("settlement: batch %s held for an operator: %s", batch.id, error)
        set_error(self.store, batch.id, error)
        return get_batch(self.store, batch.id) or batch

    def _failed(self, batch: SettlementBatch, error: str) -> SettlementBatch:
        """Fail ``batch`` (its entries are free again) and wait longer before the next one."""
        assert batch.id is not None
        self._failures += 1
        wait = min(self.backoff_cap, self.backoff_base * 2 ** (self._failures - 1))
        self._next_batch_at = self._clock() + wait
        log.error("settlement: batch %s failed: %s; next batch in %.0f s", batch.id, error, wait)
        return fail_batch(self.store, batch.id, error) or batch

    def _confirm(
        self, batch_id: str, extrinsic_hash: str | None, block_hash: str
    ) -> SettlementBatch:
        self._failures, self._next_batch_at = 0, 0.0
        return confirm_batch(
            self.store,
            self.ledger,
            batch_id,
            extrinsic_hash=extrinsic_hash,
            block_hash=block_hash,
        )

    def _tick_records(self, batch: SettlementBatch) -> list[TickRecord]:
        """``record_tick`` arguments for the TickStream pallet: ticks per (session, viewer)."""
        entries = batch_entries(self.store, batch.id)
        viewer_ids = {e.viewer_id for e in entries if e.viewer_id is not None}
        with self.store.session() as db:
            viewers = db.exec(select(Viewer).where(col(Viewer.id).in_(viewer_ids))).all()
            addresses = {v.id: v.address for v in viewers}
        ticks: dict[tuple[int, str], int] = {}
        for entry in entries:
            address = addresses.get(entry.viewer_id)
            if entry.session_id is None or not address:
                continue
            key = (entry.session_id, address)
            ticks[key] = ticks.get(key, 0) + entry.seconds
        return [TickRecord(sid, viewer, n) for (sid, viewer), n in sorted(ticks.items())]
