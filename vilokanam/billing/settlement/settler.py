"""The settler: settles unsettled ticks every ``billing.settle_interval`` seconds, or on demand.

The backend (``billing.settlement``) is ``local`` (mark entries settled, confirmed at once) or
``substrate`` (a ``Utility.batch_all`` from the escrow per batch, see ``substrate.py``). The work
is synchronous (SQL, substrate-interface) and runs in a thread; one settlement at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vilokanam.billing.ledger import Ledger
from vilokanam.billing.settlement.local import LocalSettlement
from vilokanam.config import Settings
from vilokanam.store.store import Store

if TYPE_CHECKING:  # substrate-interface (about 1 s to import) loads only for that backend
    from vilokanam.billing.settlement.chain import ChainClient
    from vilokanam.billing.settlement.substrate import SubstrateSettlement

log = logging.getLogger(__name__)


class Settler:
    """Runs the configured settlement backend on a timer and on ``settle_now``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        ledger: Ledger | None = None,
        client_factory: Callable[[], ChainClient] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.interval = settings.billing.settle_interval
        self.backend: LocalSettlement | SubstrateSettlement
        if settings.billing.settlement == "substrate":
            from vilokanam.billing.settlement.chain import ChainClient, load_escrow_seed
            from vilokanam.billing.settlement.substrate import SubstrateSettlement

            if client_factory is None:
                load_escrow_seed(settings)  # fail at start, not at the first settlement
            self.backend = SubstrateSettlement(
                store,
                ledger or Ledger(store),
                client_factory or (lambda: ChainClient.from_settings(settings)),
            )
        else:
            self.backend = LocalSettlement(store)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[dict[str, Any]] | None = None

    async def start(self) -> None:
        """Start the timer. On a chain the first settlement runs at once (it resolves batches an
        earlier run left pending); locally the first comes after ``settle_interval``."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="vilokanam-settler")

    async def stop(self) -> None:
        """Stop the timer, let a settlement in flight finish, close the chain connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._running), timeout=60)
        await asyncio.to_thread(self.backend.close)

    async def settle_now(self) -> dict[str, Any]:
        """Settle now; the summary of the batch (``state`` ``empty`` when nothing was due)."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            self._running = loop.run_in_executor(None, self.backend.settle)
            try:
                return await asyncio.shield(self._running)
            finally:
                if self._running.done():
                    self._running = None

    async def _loop(self) -> None:
        if isinstance(self.backend, LocalSettlement):
            await asyncio.sleep(self.interval)  # nothing can be pending from an earlier run
        while True:
            try:
                summary = await self.settle_now()
                if summary["batch_id"] is not None:
                    log.info("settlement: batch %s %s (%d ticks)",
                             summary["batch_id"], summary["state"], summary["ticks"])  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("settlement failed; next try in %.0f s", self.interval)
            await asyncio.sleep(self.interval)
