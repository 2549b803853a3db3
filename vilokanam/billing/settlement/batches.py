"""Settlement batches in the store: prepare (written before any submission), confirm, fail.

A batch takes unsettled watch entries (``batch_id`` None) and claims them by writing its id into
them in the same transaction that writes the ``SettlementBatch`` row, so a crash leaves either no
batch or a whole one. Its digest is SHA-256 over the entries' ``"{key}\\t{seconds}\\t{amount}\\n"``
lines, sorted; its payouts are, per channel, the sum of the ``creator:{channel_id}`` postings of
those entries.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from vilokanam.billing.ledger import Ledger
from vilokanam.store.models import (
    BatchState,
    Channel,
    EntryKind,
    LedgerEntry,
    Posting,
    SettlementBatch,
    utcnow,
)
from vilokanam.store.store import Store

log = logging.getLogger(__name__)

MAX_ENTRIES = 5000
"""Watch entries per batch (bounded so the claiming UPDATE stays small)."""
PENDING = (BatchState.PREPARED, BatchState.SUBMITTED)


def entry_line(key: str, seconds: int, amount: int) -> str:
    return f"{key}\t{seconds}\t{amount}\n"


def batch_digest(entries: Iterable[LedgerEntry]) -> str:
    """SHA-256 hex over the sorted ``key, seconds, amount`` lines of ``entries``."""
    lines = sorted(entry_line(e.key, e.seconds, e.amount) for e in entries)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def batch_remark(batch: SettlementBatch) -> bytes:
    """The ``System.remark_with_event`` payload that identifies ``batch`` on chain."""
    return f"vilokanam:batch:{batch.id}:{batch.digest}".encode()


def new_batch_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def _creator_amounts(db: Session, entries: list[LedgerEntry]) -> dict[int, int]:
    """Per channel: the sum of the ``creator:{channel_id}`` postings of ``entries``."""
    ids = [entry.id for entry in entries]
    rows = db.exec(
        select(Posting.account, Posting.amount).where(
            col(Posting.entry_id).in_(ids), col(Posting.account).startswith("creator:")
        )
    ).all()
    amounts: dict[int, int] = {}
    for account, amount in rows:
        channel_id = int(account.split(":", 1)[1])
        amounts[channel_id] = amounts.get(channel_id, 0) + amount
    return amounts


def _creator_totals(db: Session) -> dict[int, int]:
    """Per channel: the sum of the ``creator:{channel_id}`` postings of ALL unsettled watch
    entries (one GROUP BY, whatever their number)."""
    rows = db.exec(
        select(LedgerEntry.channel_id, func.sum(Posting.amount))
        .join(LedgerEntry, col(LedgerEntry.id) == col(Posting.entry_id))
        .where(
            LedgerEntry.kind == EntryKind.WATCH,
            col(LedgerEntry.batch_id).is_(None),
            col(LedgerEntry.channel_id).is_not(None),
            col(Posting.account).startswith("creator:"),
        )
        .group_by(col(LedgerEntry.channel_id))
    ).all()
    return {int(channel_id): int(total or 0) for channel_id, total in rows}


def valid_address(address: str) -> bool:
    """Whether ``address`` is a well-formed ss58 address (checksum included), any prefix."""
    from substrateinterface.utils.ss58 import ss58_decode  # only the chain backend needs it

    try:
        ss58_decode(address)
    except Exception:  # ValueError, and whatever odd input makes the decoder raise
        return False
    return True


def _excluded_channels(db: Session, *, require_address: bool, min_payout: int) -> set[int]:
    """Channels whose unsettled entries wait: payout address not a valid ss58 address (logged),
    or all they are owed together still above 0 but below ``min_payout``."""
    excluded: set[int] = set()
    if require_address:
        pending = select(LedgerEntry.channel_id).where(
            LedgerEntry.kind == EntryKind.WATCH, col(LedgerEntry.batch_id).is_(None)
        )
        channels = db.exec(
            select(Channel.id, Channel.slug, Channel.payout_address).where(
                col(Channel.id).in_(pending),
                col(Channel.payout_address).is_not(None),
                Channel.payout_address != "",
            )
        ).all()
        for channel_id, slug, address in channels:
            if not valid_address(str(address)):
                log.warning(
                    "settlement: channel %s (%s) has an invalid payout address %r; its "
                    "earnings wait until it is fixed",
                    channel_id,
                    slug,
                    address,
                )
                excluded.add(int(channel_id))
    if min_payout > 0:
        totals = _creator_totals(db)
        excluded |= {cid for cid, total in totals.items() if 0 < total < min_payout}
    return excluded


def prepare_batch(
    store: Store,
    *,
    backend: str,
    require_address: bool,
    min_payout: int = 0,
    limit: int = MAX_ENTRIES,
    confirmed: bool = False,
) -> SettlementBatch | None:
    """Claim unsettled watch entries into a new batch; None when there is nothing to settle.

    ``require_address``: only channels with a valid ss58 ``payout_address`` (others stay
    unsettled; an invalid one is logged). ``min_payout``: a channel owed above 0 but below it in
    all (the chain's existential deposit) waits for more. ``confirmed``: the local backend — no
    chain, the batch is confirmed at once.
    """
    with store.session() as db:
        excluded = _excluded_channels(db, require_address=require_address, min_payout=min_payout)
        query = (
            select(LedgerEntry)
            .where(LedgerEntry.kind == EntryKind.WATCH, col(LedgerEntry.batch_id).is_(None))
            .order_by(col(LedgerEntry.id))
            .limit(limit)
        )
        if excluded:
            query = query.where(col(LedgerEntry.channel_id).not_in(excluded))
        addresses: dict[int, str | None] = {}
        if require_address:
            query = query.join(Channel, col(Channel.id) == col(LedgerEntry.channel_id)).where(
                col(Channel.payout_address).is_not(None), Channel.payout_address != ""
            )
        entries = list(db.exec(query).all())
        if not entries:
            return None
        amounts = _creator_amounts(db, entries)
        # a channel cut short by ``limit`` could fall below the minimum in this batch: it goes
        # first in the next one (entries are taken oldest first)
        waiting = {cid for cid, amount in amounts.items() if 0 < amount < min_payout}
        if waiting:
            entries = [entry for entry in entries if entry.channel_id not in waiting]
            if not entries:
                return None
        channel_ids = {entry.channel_id for entry in entries if entry.channel_id is not None}
        for channel in db.exec(select(Channel).where(col(Channel.id).in_(channel_ids))).all():
            assert channel.id is not None
            addresses[channel.id] = channel.payout_address
        payouts = [
            {"channel_id": cid, "address": addresses.get(cid), "amount": amounts[cid]}
            for cid in sorted(amounts)
            if cid in channel_ids and amounts[cid] > 0
        ]
        now = utcnow()
        batch = SettlementBatch(
            id=new_batch_id(),
            state=BatchState.CONFIRMED if confirmed else BatchState.PREPARED,
            backend=backend,
            digest=batch_digest(entries),
            payouts=payouts,
            ticks=sum(entry.seconds for entry in entries),
            created_at=now,
            confirmed_at=now if confirmed else None,
        )
        db.add(batch)
        ids = [entry.id for entry in entries]
        claimed = db.exec(  # type: ignore[call-overload]
            update(LedgerEntry)
            .where(col(LedgerEntry.id).in_(ids), col(LedgerEntry.batch_id).is_(None))
            .values(batch_id=batch.id)
        )
        if claimed.rowcount != len(ids):  # another settler took some of them: try again later
            db.rollback()
            log.warning("settlement: entries claimed concurrently; batch abandoned")
            return None
        db.commit()
        return batch


def get_batch(store: Store, batch_id: str) -> SettlementBatch | None:
    with store.session() as db:
        return db.get(SettlementBatch, batch_id)


def pending_batches(store: Store, backend: str) -> list[SettlementBatch]:
    """Prepared or submitted batches of ``backend``, oldest first."""
    with store.session() as db:
        query = (
            select(SettlementBatch)
            .where(col(SettlementBatch.state).in_(PENDING), SettlementBatch.backend == backend)
            .order_by(col(SettlementBatch.created_at), col(SettlementBatch.id))
        )
        return list(db.exec(query).all())


def batch_entries(store: Store, batch_id: str) -> list[LedgerEntry]:
    with store.session() as db:
        query = select(LedgerEntry).where(LedgerEntry.batch_id == batch_id)
        return list(db.exec(query.order_by(col(LedgerEntry.id))).all())


def mark_submitted(
    store: Store,
    batch_id: str,
    extrinsic_hash: str | None = None,
    *,
    nonce: int | None = None,
    genesis_hash: str | None = None,
    submitted_block: int | None = None,
) -> None:
    """State submitted, with the signed extrinsic's hash and escrow nonce, the chain's genesis
    and the finalized height, written before it leaves: from now on the batch is resolved by its
    nonce before any retry. The nonce, genesis and height of the first submission are kept."""
    with store.session() as db:
        batch = db.get(SettlementBatch, batch_id)
        if batch is not None and batch.state in PENDING:
            batch.state = BatchState.SUBMITTED
            batch.submitted_at = batch.submitted_at or utcnow()
            batch.extrinsic_hash = extrinsic_hash
            if batch.nonce is None:
                batch.nonce = nonce
                batch.genesis_hash = genesis_hash
                batch.submitted_block = submitted_block
            db.add(batch)
            db.commit()


def confirm_batch(
    store: Store,
    ledger: Ledger,
    batch_id: str,
    *,
    extrinsic_hash: str | None,
    block_hash: str | None,
) -> SettlementBatch:
    """Confirmed + one payout entry per creator (``creator:{id}`` → ``payouts``), in one
    transaction; a batch already confirmed is left as it is."""
    with store.session() as db:
        batch = db.get(SettlementBatch, batch_id)
        if batch is None:
            raise LookupError(f"no settlement batch {batch_id!r}")
        if batch.state == BatchState.CONFIRMED:
            return batch
        batch.state = BatchState.CONFIRMED
        batch.confirmed_at = utcnow()
        batch.extrinsic_hash = extrinsic_hash
        batch.block_hash = block_hash
        batch.error = None
        db.add(batch)
        for payout in batch.payouts:
            channel_id, amount = int(payout["channel_id"]), int(payout["amount"])
            ledger.post_entry(
                f"payout:{batch_id}:{channel_id}",
                EntryKind.PAYOUT,
                [(f"creator:{channel_id}", -amount), ("payouts", amount)],
                channel_id=channel_id,
                amount=amount,
                db=db,
            )
        db.commit()
        return batch


def fail_batch(store: Store, batch_id: str, error: str) -> SettlementBatch | None:
    """State failed (the chain refused it: nothing paid); its entries are unsettled again."""
    with store.session() as db:
        batch = db.get(SettlementBatch, batch_id)
        if batch is None or batch.state not in PENDING:
            return batch
        batch.state = BatchState.FAILED
        batch.error = error[:2000]
        db.add(batch)
        db.exec(  # type: ignore[call-overload]
            update(LedgerEntry).where(LedgerEntry.batch_id == batch_id).values(batch_id=None)
        )
        db.commit()
        return batch


def set_error(store: Store, batch_id: str, error: str) -> None:
    """Note why a pending batch is still pending (the chain was unreachable…)."""
    with store.session() as db:
        batch = db.get(SettlementBatch, batch_id)
        if batch is not None and batch.state in PENDING:
            batch.error = error[:2000]
            db.add(batch)
            db.commit()


def summarize(batch: SettlementBatch | None, **extra: Any) -> dict[str, Any]:
    """The ``settle_now`` answer for ``batch`` (None: nothing to settle)."""
    if batch is None:
        return {"batch_id": None, "state": "empty", "ticks": 0, "payouts": [], **extra}
    return {
        "batch_id": batch.id,
        "state": str(batch.state),
        "backend": batch.backend,
        "ticks": batch.ticks,
        "digest": batch.digest,
        "payouts": batch.payouts,
        "extrinsic_hash": batch.extrinsic_hash,
        "block_hash": batch.block_hash,
        "error": batch.error,
        **extra,
    }
