"""The deposit watcher: credits viewers for Balances transfers to the escrow, once.

It reads finalized blocks after its ``ChainCursor`` and, for each ``Balances.Transfer`` whose
``to`` is the escrow, writes a ``ChainDeposit`` (key ``{block_hash}:{extrinsic_idx}:{event_idx}``)
and — when ``from`` is a registered viewer address — a ledger deposit, together with the cursor
in one transaction. A restart, a re-scan or a second watcher never credits twice (the key is
unique, the ledger entry key too). A cursor from another chain (genesis hash differs, or ahead of
the chain's head: a reset dev chain) starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from substrateinterface.utils.ss58 import ss58_decode, ss58_encode

from vilokanam.billing.ledger import Ledger
from vilokanam.billing.settlement.chain import (
    ChainClient,
    ChainError,
    Transfer,
    load_escrow_seed,
)
from vilokanam.config import Settings
from vilokanam.store.models import ChainCursor, ChainDeposit
from vilokanam.store.store import Store

log = logging.getLogger(__name__)

CURSOR = "deposits"
MAX_BLOCKS = 500
"""Blocks read per poll at most (a long catch-up yields between polls)."""
START_LOOKBACK = 14_400
"""A new cursor starts this many blocks before the finalized head (a day of 6 s blocks)."""


class DepositWatcher:
    """Polls finalized blocks every ``chain.poll_interval`` seconds."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        ledger: Ledger | None = None,
        client_factory: Callable[[], ChainClient] | None = None,
        start_lookback: int = START_LOOKBACK,
        on_credit: Callable[[int], None] | None = None,
    ) -> None:
        """``on_credit(viewer_id)`` runs after each credited deposit is committed (to drop a
        cached balance, say); its errors are logged, never raised."""
        self.store = store
        self.on_credit = on_credit
        self.ledger = ledger or Ledger(store)
        self.interval = settings.chain.poll_interval
        self.ss58_format = settings.chain.ss58_format
        self.start_lookback = start_lookback
        if client_factory is None:
            load_escrow_seed(settings)  # fail at start: the escrow address is what it watches
        self._client_factory = client_factory or (lambda: ChainClient.from_settings(settings))
        self._client: ChainClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def client(self) -> ChainClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="vilokanam-deposit-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._lock:
            if self._client is not None:
                await asyncio.to_thread(self._client.close)

    async def poll(self) -> int:
        """Read the new finalized blocks now; the number of deposits credited."""
        async with self._lock:
            return await asyncio.to_thread(self.scan)

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except ChainError as exc:
                log.warning("deposit watcher: chain unavailable: %s", exc)
            except Exception:
                log.exception("deposit watcher failed; next look in %.0f s", self.interval)
            await asyncio.sleep(self.interval)

    # -- synchronous work -------------------------------------------------------------------
    def scan(self, max_blocks: int = MAX_BLOCKS) -> int:
        """Credit deposits in finalized blocks after the cursor (at most ``max_blocks``)."""
        client = self.client
        genesis = client.genesis_hash()
        head = client.finalized_number()
        escrow = client.escrow_address
        position = self._cursor_position(genesis, head)
        credited = 0
        last = min(head, position + max_blocks)
        for number in range(position + 1, last + 1):
            transfers = [t for t in client.transfers_to(escrow, number) if t.sender != escrow]
            if transfers:
                credited += self._record(number, transfers)
        if last > position:
            self._move_cursor(last)
        return credited

    def _cursor_position(self, genesis: str, head: int) -> int:
        """The last block read; a cursor of another chain starts again."""
        with self.store.session() as db:
            cursor = db.get(ChainCursor, CURSOR)
            if (
                cursor is not None
                and cursor.genesis_hash == genesis
                and cursor.block_number <= head
            ):
                return cursor.block_number
            start = max(0, head - self.start_lookback)
            if cursor is not None:
                log.warning(
                    "deposit watcher: cursor belongs to another chain; from block %d", start
                )
            cursor = cursor or ChainCursor(name=CURSOR)
            cursor.genesis_hash = genesis
            cursor.block_number = start
            db.add(cursor)
            db.commit()
            return start

    def _move_cursor(self, number: int) -> None:
        with self.store.session() as db:
            cursor = db.get(ChainCursor, CURSOR)
            if cursor is not None and cursor.block_number < number:
                cursor.block_number = number
                db.add(cursor)
                db.commit()

    def _viewer_id(self, address: str) -> int | None:
        """The registered viewer for ``address`` (as the chain writes it, or in generic form)."""
        candidates = [address]
        with contextlib.suppress(ValueError):
            public = ss58_decode(address)
            candidates += [ss58_encode(public, self.ss58_format), ss58_encode(public, 42)]
        for candidate in dict.fromkeys(candidates):
            viewer = self.store.viewer_for_address(candidate)
            if viewer is not None:
                return viewer.id
        return None

    def _record(self, number: int, transfers: list[Transfer]) -> int:
        """The block's deposits and the cursor, in one transaction; the number credited."""
        viewers = {t.sender: self._viewer_id(t.sender) for t in transfers}
        credited = 0
        credited_viewers: list[int] = []
        with self.store.session() as db:
            for transfer in transfers:
                if db.get(ChainDeposit, transfer.key) is not None:
                    continue
                viewer_id = viewers[transfer.sender]
                db.add(
                    ChainDeposit(
                        key=transfer.key,
                        viewer_id=viewer_id,
                        sender=transfer.sender,
                        amount=transfer.amount,
                        block_number=number,
                    )
                )
                if viewer_id is None:
                    log.warning("deposit watcher: %d planck from unregistered %s (block %d) kept "
                                "in chain_deposit, not credited", transfer.amount, transfer.sender,
                                number)  # fmt: skip
                    continue
                if self.ledger.deposit(viewer_id, transfer.amount, f"chain:{transfer.key}", db=db):
                    credited += 1
                    credited_viewers.append(viewer_id)
                    log.info("deposit watcher: viewer %d credited %d planck (block %d)",
                             viewer_id, transfer.amount, number)  # fmt: skip
            cursor = db.get(ChainCursor, CURSOR)
            if cursor is not None and cursor.block_number < number:
                cursor.block_number = number
                db.add(cursor)
            db.commit()
        if self.on_credit is not None:
            for viewer_id in credited_viewers:
                try:
                    self.on_credit(viewer_id)
                except Exception:
                    log.exception("deposit watcher: on_credit(%d) failed", viewer_id)
        return credited
