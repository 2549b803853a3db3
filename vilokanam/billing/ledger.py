"""The double-entry ledger: integer planck, every entry's postings sum to zero, keys idempotent.

Accounts: ``viewer:{id}`` (what a viewer may spend), ``creator:{channel_id}`` (what a channel
earned and was not paid out), ``platform`` (fees), ``deposits`` (money in: goes negative as
viewers deposit), ``payouts`` (money out to creators). Synchronous, over the store's engine;
async callers use ``asyncio.to_thread``. Methods that take ``db`` join the caller's transaction
(nothing is committed then); without it they commit their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session, select

from vilokanam.store import Store
from vilokanam.store.models import (
    BatchState,
    EntryKind,
    LedgerEntry,
    Posting,
    SettlementBatch,
    utcnow,
)

PLATFORM = "platform"
DEPOSITS = "deposits"
PAYOUTS = "payouts"
MAX_AMOUNT = 2**63 - 1  # a signed 64-bit column
CHUNK = 500  # values per IN (...) list
_FLUSH_LOCK = (0x56494C4F, 1)  # PostgreSQL advisory lock: one watch flush at a time


def viewer_account(viewer_id: int) -> str:
    return f"viewer:{viewer_id}"


def creator_account(channel_id: int) -> str:
    return f"creator:{channel_id}"


def split_fee(gross: int, fee_bps: int) -> tuple[int, int]:
    """``(creator's part, platform fee)`` of ``gross`` planck; the fee rounds down."""
    fee = gross * fee_bps // 10_000
    return gross - fee, fee


def watch_key(viewer_id: int, session_id: int, ticks_from: int, ticks_to: int) -> str:
    return f"watch:{viewer_id}:{session_id}:{ticks_from}-{ticks_to}"


@dataclass(frozen=True, slots=True)
class WatchCharge:
    """Ticks ``ticks_from``..``ticks_to`` a viewer watched of one session, at ``price`` each."""

    viewer_id: int
    channel_id: int
    session_id: int
    ticks_from: int
    ticks_to: int
    price: int

    @property
    def key(self) -> str:
        return watch_key(self.viewer_id, self.session_id, self.ticks_from, self.ticks_to)


def _check_postings(postings: Sequence[tuple[str, int]]) -> None:
    if not postings:
        raise ValueError("an entry needs postings")
    for account, amount in postings:
        if not isinstance(account, str) or not 0 < len(account) <= 64:
            raise ValueError(f"invalid account {account!r}")
        if type(amount) is not int or abs(amount) > MAX_AMOUNT:
            raise ValueError(f"invalid posting amount {amount!r}: an integer number of planck")
    total = sum(amount for _, amount in postings)
    if total != 0:
        raise ValueError(f"postings must sum to 0, they sum to {total}")


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


class Ledger:
    """Balances, idempotent entries, earnings and the settler's queue, over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextmanager
    def _session(self, db: Session | None) -> Iterator[tuple[Session, bool]]:
        """The caller's session (not committed here) or a new one (committed on success)."""
        if db is not None:
            yield db, False
            return
        with self.store.session() as own:
            yield own, True

    # -- reading --------------------------------------------------------------------------
    def balance(self, account: str, *, db: Session | None = None) -> int:
        return self.balances([account], db=db).get(account, 0)

    def viewer_balance(self, viewer_id: int, *, db: Session | None = None) -> int:
        return self.balance(viewer_account(viewer_id), db=db)

    def balances(self, accounts: Iterable[str], *, db: Session | None = None) -> dict[str, int]:
        """Balance of each account (0 for one without postings)."""
        wanted = sorted(set(accounts))
        result = dict.fromkeys(wanted, 0)
        with self._session(db) as (session, _):
            for chunk in _chunks(wanted):
                rows = session.exec(
                    select(Posting.account, func.sum(Posting.amount))
                    .where(Posting.account.in_(chunk))  # type: ignore[attr-defined]
                    .group_by(Posting.account)
                )
                for account, total in rows:
                    result[account] = int(total or 0)
        return result

    def sum_of_all_postings(self) -> int:
        """Must be 0: a test helper and a health check."""
        with self.store.session() as db:
            return int(db.exec(select(func.coalesce(func.sum(Posting.amount), 0))).one())

    def entries(
        self,
        *,
        session_id: int | None = None,
        viewer_id: int | None = None,
        channel_id: int | None = None,
        limit: int = 100,
    ) -> list[tuple[LedgerEntry, list[Posting]]]:
        """Entries matching every filter given, newest first, each with its postings."""
        query = select(LedgerEntry)
        if session_id is not None:
            query = query.where(LedgerEntry.session_id == session_id)
        if viewer_id is not None:
            query = query.where(LedgerEntry.viewer_id == viewer_id)
        if channel_id is not None:
            query = query.where(LedgerEntry.channel_id == channel_id)
        query = query.order_by(LedgerEntry.id.desc()).limit(max(1, limit))  # type: ignore[union-attr]
        with self.store.session() as db:
            entries = list(db.exec(query))
            postings: dict[int, list[Posting]] = {entry.id or 0: [] for entry in entries}
            for chunk in _chunks(list(postings)):
                for posting in db.exec(
                    select(Posting)
                    .where(Posting.entry_id.in_(chunk))  # type: ignore[attr-defined]
                    .order_by(Posting.id)  # type: ignore[arg-type]
                ):
                    postings[posting.entry_id].append(posting)
        return [(entry, postings[entry.id or 0]) for entry in entries]

    def unsettled_watch_entries(self, limit: int = 10_000) -> list[LedgerEntry]:
        """Watch entries no settlement batch has taken yet, oldest first (for the settler)."""
        with self.store.session() as db:
            return list(
                db.exec(
                    select(LedgerEntry)
                    .where(LedgerEntry.kind == EntryKind.WATCH, LedgerEntry.batch_id.is_(None))  # type: ignore[union-attr]
                    .order_by(LedgerEntry.id)  # type: ignore[arg-type]
                    .limit(limit)
                )
            )

    def earnings(self, channel_id: int, since: datetime | None = None) -> dict[str, int]:
        """What a channel earned from watching (since ``since``): seconds, gross, fees, net, and
        the net split into settled (in a confirmed batch) and unsettled."""
        conditions = [LedgerEntry.kind == EntryKind.WATCH, LedgerEntry.channel_id == channel_id]
        if since is not None:
            conditions.append(LedgerEntry.created_at >= since)  # type: ignore[arg-type,operator]
        confirmed = select(SettlementBatch.id).where(SettlementBatch.state == BatchState.CONFIRMED)
        with self.store.session() as db:
            seconds, gross = db.exec(
                select(
                    func.coalesce(func.sum(LedgerEntry.seconds), 0),
                    func.coalesce(func.sum(LedgerEntry.amount), 0),
                ).where(*conditions)
            ).one()
            by_account = db.exec(
                select(
                    Posting.account,
                    LedgerEntry.batch_id.in_(confirmed),  # type: ignore[union-attr]
                    func.sum(Posting.amount),
                )
                .join(LedgerEntry, Posting.entry_id == LedgerEntry.id)  # type: ignore[arg-type]
                .where(*conditions)
                .where(Posting.account.in_([PLATFORM, creator_account(channel_id)]))  # type: ignore[attr-defined]
                .group_by(Posting.account, LedgerEntry.batch_id.in_(confirmed))  # type: ignore[union-attr]
            ).all()
        fees = net = settled = 0
        for account, is_settled, total in by_account:
            if account == PLATFORM:
                fees += int(total)
            else:
                net += int(total)
                settled += int(total) if is_settled else 0
        return {
            "channel_id": channel_id,
            "seconds": int(seconds),
            "gross": int(gross),
            "fees": fees,
            "net": net,
            "settled": settled,
            "unsettled": net - settled,
        }

    # -- writing --------------------------------------------------------------------------
    def post_entry(
        self,
        key: str,
        kind: EntryKind,
        postings: Sequence[tuple[str, int]],
        *,
        viewer_id: int | None = None,
        channel_id: int | None = None,
        session_id: int | None = None,
        seconds: int = 0,
        amount: int = 0,
        db: Session | None = None,
    ) -> LedgerEntry | None:
        """Write one entry and its postings; None (and nothing written) if ``key`` was posted
        before. Raises ``ValueError`` unless the postings are integers summing to 0."""
        _check_postings(postings)
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise ValueError(f"invalid entry key {key!r}: 1-200 characters")
        entry = LedgerEntry(
            key=key,
            kind=EntryKind(kind),
            viewer_id=viewer_id,
            channel_id=channel_id,
            session_id=session_id,
            seconds=seconds,
            amount=amount,
            created_at=utcnow(),
        )
        with self._session(db) as (session, own):
            written = self._insert_entries(session.connection(), [(entry, list(postings))])
            if own:
                session.commit()
        return entry if written else None

    def deposit(self, viewer_id: int, amount: int, key: str, *, db: Session | None = None) -> bool:
        """Credit a viewer ``amount`` planck; False if ``key`` was deposited before."""
        if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:
            raise ValueError(f"invalid deposit {amount!r}: a positive integer number of planck")
        entry = self.post_entry(
            key,
            EntryKind.DEPOSIT,
            [(DEPOSITS, -amount), (viewer_account(viewer_id), amount)],
            viewer_id=viewer_id,
            amount=amount,
            db=db,
        )
        return entry is not None

    def post_watches(
        self, charges: Sequence[WatchCharge], fee_bps: int, *, db: Session
    ) -> list[int | None]:
        """Post watch entries in the caller's transaction, never taking a viewer below zero.

        For each charge, in order: None if its key was posted before; else the ticks paid, which
        is fewer than asked (down to 0, then no entry is written) when the viewer's balance runs
        out. Viewer → creator (less the fee) + platform (the fee)."""
        connection = db.connection()
        self.lock_watch_flushes(db)
        keys = [charge.key for charge in charges]
        posted = self._existing_keys(connection, keys)
        balances = self.balances({viewer_account(charge.viewer_id) for charge in charges}, db=db)
        results: list[int | None] = []
        batch: list[tuple[LedgerEntry, list[tuple[str, int]]]] = []
        now = utcnow()
        for charge, key in zip(charges, keys, strict=True):
            if key in posted:
                results.append(None)
                continue
            posted.add(key)
            account = viewer_account(charge.viewer_id)
            wanted = charge.ticks_to - charge.ticks_from
            price = charge.price
            paid = min(wanted, max(balances[account], 0) // price) if price > 0 else 0
            results.append(paid)
            if paid <= 0:
                continue
            gross = paid * price
            creator, fee = split_fee(gross, fee_bps)
            balances[account] -= gross
            postings = [(account, -gross), (creator_account(charge.channel_id), creator)]
            if fee:
                postings.append((PLATFORM, fee))
            entry = LedgerEntry(
                key=key,
                kind=EntryKind.WATCH,
                viewer_id=charge.viewer_id,
                channel_id=charge.channel_id,
                session_id=charge.session_id,
                seconds=paid,
                amount=gross,
                created_at=now,
            )
            batch.append((entry, postings))
        self._insert_entries(connection, batch, checked=True)
        return results

    @staticmethod
    def lock_watch_flushes(db: Session) -> None:
        """On PostgreSQL, wait for the transaction-scoped lock that lets one watch flush run at
        a time across servers (held until ``db`` commits or rolls back; taking it again in the
        same transaction is harmless). Take it before reading anything the flush decides on
        (saved watch states, balances): under READ COMMITTED each later statement then sees
        what the previous flush committed. A no-op on SQLite (one server's database)."""
        connection = db.connection()
        if connection.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:a, :b)")
            connection.execute(lock, {"a": _FLUSH_LOCK[0], "b": _FLUSH_LOCK[1]})

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _existing_keys(connection: Connection, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        table = LedgerEntry.__table__  # type: ignore[attr-defined]
        for chunk in _chunks(keys):
            found.update(
                connection.execute(
                    select(table.c.key).where(table.c.key.in_(chunk))  # type: ignore[call-overload]
                ).scalars()
            )
        return found

    @staticmethod
    def _insert_entries(
        connection: Connection,
        items: Sequence[tuple[LedgerEntry, list[tuple[str, int]]]],
        *,
        checked: bool = False,
    ) -> int:
        """Insert entries (skipping keys already there) and their postings; returns how many
        entries were written. Sets ``id`` on the entries written. ``checked``: the caller saw
        that no key exists (a concurrent writer then fails the transaction, never doubles)."""
        if not items:
            return 0
        table = LedgerEntry.__table__  # type: ignore[attr-defined]
        rows = [
            {
                "key": entry.key,
                "kind": entry.kind,
                "viewer_id": entry.viewer_id,
                "channel_id": entry.channel_id,
                "session_id": entry.session_id,
                "seconds": entry.seconds,
                "amount": entry.amount,
                "batch_id": entry.batch_id,
                "created_at": entry.created_at,
            }
            for entry, _ in items
        ]
        dialect = connection.dialect.name
        if checked:  # keys known to be new in this transaction: one bulk insert
            statement = table.insert().returning(
                table.c.id, table.c.key, sort_by_parameter_order=True
            )
            ids = {row.key: row.id for row in connection.execute(statement, rows)}
        elif dialect in ("postgresql", "sqlite"):
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            statement = (
                insert(table)
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(table.c.id, table.c.key)
            )
            ids: dict[str, int] = {}
            for row in rows:  # one row per statement: RETURNING with ON CONFLICT stays exact
                result = connection.execute(statement, row).first()
                if result is not None:
                    ids[result.key] = result.id
        else:  # pragma: no cover - other databases: check, then insert
            existing = Ledger._existing_keys(connection, [row["key"] for row in rows])
            ids = {}
            for row in rows:
                if row["key"] not in existing:
                    result = connection.execute(table.insert().returning(table.c.id), row)
                    ids[row["key"]] = result.scalar_one()
        postings = []
        for entry, entry_postings in items:
            entry_id = ids.get(entry.key)
            if entry_id is None:
                continue
            entry.id = entry_id
            postings += [
                {"entry_id": entry_id, "account": account, "amount": amount}
                for account, amount in entry_postings
            ]
        if postings:
            connection.execute(Posting.__table__.insert(), postings)  # type: ignore[attr-defined]
        return len(ids)
