"""Local settlement: the ledger is the truth and nothing leaves the machine.

A settlement only marks the unsettled watch entries as settled by a batch (confirmed at once), so
``earnings`` can tell settled from unsettled; no payout entries are posted (money stays in the
creators' ledger accounts).
"""

from __future__ import annotations

from typing import Any

from vilokanam.billing.settlement.batches import prepare_batch, summarize
from vilokanam.store.store import Store


class LocalSettlement:
    name = "local"

    def __init__(self, store: Store) -> None:
        self.store = store

    def settle(self) -> dict[str, Any]:
        batch = prepare_batch(self.store, backend=self.name, require_address=False, confirmed=True)
        return summarize(batch)

    def close(self) -> None:
        pass
