"""Substrate settlement: one ``Utility.batch_all`` from the escrow per batch, paid exactly once.

Order of work for a batch: prepared (row + claimed entries, no chain needed) → submitted (written
before the extrinsic leaves) → confirmed (found on chain: state + payout entries in one
transaction) or failed (the chain refused it: entries freed). A batch still prepared or submitted
when a settlement starts — after a crash, a timeout or a lost connection — is looked up on chain
first (its ``System.Remarked`` hash in the last ``lookup_depth`` blocks); only when it is not there,
and no extrinsic of the escrow waits in the pool, is the same batch (same id, same remark) sent
again. An unreachable chain leaves the batch pending; ticks keep accruing in the ledger.
"""

from __future__ import annotations

import logging
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
from vilokanam.billing.settlement.chain import LOOKUP_DEPTH, ChainClient, ChainError, TickRecord
from vilokanam.store.models import SettlementBatch, Viewer
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
        lookup_depth: int = LOOKUP_DEPTH,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self._client_factory = client_factory
        self._client: ChainClient | None = None
        self.lookup_depth = lookup_depth
        self._min_payout = 0

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
        """Look ``batch`` up on chain (unless ``fresh``: just prepared, never sent), then submit
        it if it is not there; returns the batch as it now stands."""
        assert batch.id is not None
        try:
            client = self.client
            ticks = self._tick_records(batch) if client.has_tick_stream() else None
            if not fresh:
                found = (
                    client.find_extrinsic(batch.extrinsic_hash, self.lookup_depth)
                    if ticks and batch.extrinsic_hash
                    else client.find_remark(batch_remark(batch), self.lookup_depth)
                )
                if found is not None:
                    log.info("settlement: batch %s found on chain in block %d: confirmed",
                             batch.id, found.block_number)  # fmt: skip
                    return self._confirm(batch.id, found.extrinsic_hash, found.block_hash)
                if client.escrow_has_pending():
                    set_error(self.store, batch.id, "an escrow extrinsic is pending; waiting")
                    return get_batch(self.store, batch.id) or batch
            payouts = [(str(p["address"]), int(p["amount"])) for p in batch.payouts]
            extrinsic = client.sign(client.compose_batch(payouts, batch_remark(batch), ticks))
            mark_submitted(self.store, batch.id, client.extrinsic_hash(extrinsic))
            submission = client.submit(extrinsic)
        except ChainError as exc:
            log.warning("settlement: batch %s pending, chain unavailable: %s", batch.id, exc)
            set_error(self.store, batch.id, f"chain unavailable: {exc}")
            return get_batch(self.store, batch.id) or batch
        if submission.success:
            log.info("settlement: batch %s confirmed in block %d (fee %d)",
                     batch.id, submission.block_number, submission.fee)  # fmt: skip
            return self._confirm(batch.id, submission.extrinsic_hash, submission.block_hash)
        log.error("settlement: batch %s failed on chain: %s", batch.id, submission.error)
        failed = fail_batch(self.store, batch.id, f"extrinsic failed: {submission.error}")
        return failed or batch

    def _confirm(
        self, batch_id: str, extrinsic_hash: str | None, block_hash: str
    ) -> SettlementBatch:
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
