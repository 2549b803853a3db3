"""A small synchronous client for the Substrate chain (substrate-interface underneath).

Everything here blocks: the server calls it through ``asyncio.to_thread``. Call and event names
are read from the runtime's metadata, so the same code works on old runtimes
(``Balances.transfer``) and new ones (``Balances.transfer_allow_death``), and uses a
``TickStream.record_tick`` pallet where the runtime has one instead of the remark.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from substrateinterface import Keypair, SubstrateInterface
from substrateinterface.exceptions import SubstrateRequestException
from substrateinterface.utils.hasher import blake2_256
from substrateinterface.utils.ss58 import ss58_decode, ss58_encode

from vilokanam.config import Settings

log = logging.getLogger(__name__)

LOOKUP_DEPTH = 2000
"""Blocks scanned back from the head when looking a batch up on chain (about 3.7 ms each)."""


class ChainError(Exception):
    """The chain could not be reached or did not answer in time: try again later."""


class EscrowSeedMissing(ChainError):
    """No escrow seed in ``chain.escrow_seed_file`` nor ``VILOKANAM_ESCROW_SEED``."""


@dataclass(frozen=True)
class TickRecord:
    """One ``TickStream.record_tick(stream_id, viewer, ticks)`` call."""

    stream_id: int
    viewer: str
    ticks: int


@dataclass(frozen=True)
class Submission:
    """What became of a submitted extrinsic (included: success or failure)."""

    success: bool
    extrinsic_hash: str
    block_hash: str
    block_number: int
    fee: int
    error: str | None = None


@dataclass(frozen=True)
class Found:
    """Where a batch's remark (or extrinsic) was found on chain."""

    block_hash: str
    block_number: int
    extrinsic_idx: int
    extrinsic_hash: str | None = None


@dataclass(frozen=True)
class Transfer:
    """A ``Balances.Transfer`` event; ``key`` is ``{block_hash}:{extrinsic_idx}:{event_idx}``."""

    key: str
    block_number: int
    sender: str
    amount: int


def load_escrow_seed(settings: Settings) -> str:
    """The escrow seed from ``chain.escrow_seed_file``, else ``VILOKANAM_ESCROW_SEED``."""
    if settings.chain.escrow_seed_file:
        seed = Path(settings.chain.escrow_seed_file).read_text().strip()
    else:
        seed = os.environ.get("VILOKANAM_ESCROW_SEED", "").strip()
    if not seed:
        raise EscrowSeedMissing(
            "no escrow seed: set chain.escrow_seed_file or the env var VILOKANAM_ESCROW_SEED"
        )
    return seed


def keypair_from_seed(seed: str, ss58_format: int) -> Keypair:
    """A keypair from a mnemonic, a ``//Dev`` URI or a 0x hex seed."""
    if seed.startswith("0x"):
        return Keypair.create_from_seed(seed, ss58_format=ss58_format)
    return Keypair.create_from_uri(seed, ss58_format=ss58_format)


def remark_hash(remark: bytes) -> str:
    """The hash ``System.Remarked`` carries for ``remark``: 0x + blake2_256 hex."""
    return "0x" + blake2_256(remark).hex()


def same_account(a: str, b: str) -> bool:
    """Whether two ss58 addresses (any prefix) name the same account."""
    try:
        return ss58_decode(a) == ss58_decode(b)
    except ValueError:
        return False


class ChainClient:
    """One connection to a node; ``keypair`` (the escrow) is needed only to submit."""

    def __init__(
        self,
        url: str,
        *,
        ss58_format: int = 42,
        keypair: Keypair | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.ss58_format = ss58_format
        self.keypair = keypair
        self.timeout = timeout
        self._substrate: SubstrateInterface | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, with_escrow: bool = True) -> ChainClient:
        keypair = None
        if with_escrow:
            keypair = keypair_from_seed(load_escrow_seed(settings), settings.chain.ss58_format)
        return cls(
            settings.chain.url,
            ss58_format=settings.chain.ss58_format,
            keypair=keypair,
            timeout=settings.chain.timeout,
        )

    # -- connection -------------------------------------------------------------------------
    @property
    def substrate(self) -> SubstrateInterface:
        """The connection, opened on first use; connection errors become ``ChainError``."""
        if self._substrate is None:
            try:
                self._substrate = SubstrateInterface(
                    url=self.url,
                    ss58_format=self.ss58_format,
                    auto_reconnect=False,
                    ws_options={"timeout": self.timeout},
                )
            except Exception as exc:
                raise ChainError(f"cannot connect to {self.url}: {exc}") from exc
        return self._substrate

    def close(self) -> None:
        if self._substrate is not None:
            try:
                self._substrate.close()
            finally:
                self._substrate = None

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``function``; a transport error closes the connection and raises ChainError."""
        try:
            return function(*args, **kwargs)
        except (SubstrateRequestException, ValueError, TypeError, KeyError):
            raise
        except Exception as exc:  # websocket/socket errors, timeouts
            self.close()
            raise ChainError(f"{what} failed on {self.url}: {exc!r}") from exc

    @property
    def escrow_address(self) -> str:
        if self.keypair is None:
            raise EscrowSeedMissing("no escrow keypair")
        return ss58_encode(self.keypair.public_key, self.ss58_format)

    # -- chain facts ------------------------------------------------------------------------
    def genesis_hash(self) -> str:
        return str(self._call("genesis", self.substrate.get_block_hash, 0))

    def finalized_number(self) -> int:
        """Number of the finalized head."""
        s = self.substrate
        head = self._call("finalized head", s.rpc_request, "chain_getFinalizedHead", [])
        return int(self._call("block number", s.get_block_number, head["result"]))

    def block_hash(self, number: int) -> str | None:
        return self._call("block hash", self.substrate.get_block_hash, number)

    def existential_deposit(self) -> int:
        constant = self._call(
            "constant", self.substrate.get_constant, "Balances", "ExistentialDeposit"
        )
        return int(constant.value) if constant is not None else 0

    def free_balance(self, address: str) -> int:
        info = self._call("query", self.substrate.query, "System", "Account", [address])
        return int(info.value["data"]["free"])

    def has_call(self, pallet: str, function: str) -> bool:
        """Whether the runtime's metadata has ``pallet.function``."""
        s = self.substrate
        self._call("metadata", s.init_runtime)
        for module in s.metadata.pallets:
            if module.name == pallet:
                return any(call.name == function for call in (module.calls or []))
        return False

    def has_tick_stream(self) -> bool:
        return self.has_call("TickStream", "record_tick")

    def transfer_function(self) -> str:
        """``transfer_allow_death`` on current runtimes, ``transfer`` on older ones."""
        if self.has_call("Balances", "transfer_allow_death"):
            return "transfer_allow_death"
        return "transfer"

    def escrow_has_pending(self) -> bool:
        """Whether an extrinsic from the escrow waits in the node's pool (pool-aware next nonce
        ahead of the on-chain nonce): resubmitting then could pay twice, so wait."""
        s = self.substrate
        address = self.escrow_address
        pending = self._call("next index", s.rpc_request, "system_accountNextIndex", [address])
        account = self._call("query", s.query, "System", "Account", [address])
        return int(pending["result"]) > int(account.value["nonce"])

    # -- settlement -------------------------------------------------------------------------
    def compose_batch(
        self,
        payouts: list[tuple[str, int]],
        remark: bytes,
        ticks: list[TickRecord] | None = None,
    ) -> Any:
        """One ``Utility.batch_all``: a transfer per ``(address, amount)``, then the remark —
        or, where the runtime has ``TickStream.record_tick`` and ``ticks`` are given, those
        calls instead of the remark."""
        s = self.substrate
        transfer = self.transfer_function()
        calls = [
            self._call(
                "compose",
                s.compose_call,
                "Balances",
                transfer,
                {"dest": address, "value": amount},
            )
            for address, amount in payouts
        ]
        if ticks and self.has_tick_stream():
            calls += [
                self._call(
                    "compose",
                    s.compose_call,
                    "TickStream",
                    "record_tick",
                    {"stream_id": t.stream_id, "viewer": t.viewer, "ticks": t.ticks},
                )
                for t in ticks
            ]
        else:
            calls.append(
                self._call(
                    "compose", s.compose_call, "System", "remark_with_event", {"remark": remark}
                )
            )
        return self._call("compose", s.compose_call, "Utility", "batch_all", {"calls": calls})

    @staticmethod
    def extrinsic_hash(extrinsic: Any) -> str:
        return "0x" + extrinsic.extrinsic_hash.hex()

    def sign(self, call: Any) -> Any:
        """The signed extrinsic from the escrow (immortal: its nonce makes it run at most once)."""
        if self.keypair is None:
            raise EscrowSeedMissing("no escrow keypair: cannot sign")
        return self._call(
            "sign", self.substrate.create_signed_extrinsic, call=call, keypair=self.keypair
        )

    def submit(self, extrinsic: Any) -> Submission:
        """Submit and wait for finalization; ChainError when the outcome is unknown."""
        s = self.substrate
        try:
            receipt = self._call(
                "submit", s.submit_extrinsic, extrinsic, wait_for_finalization=True
            )
            success = bool(self._call("receipt", lambda: receipt.is_success))
            number = int(self._call("block number", s.get_block_number, receipt.block_hash))
            fee = int(self._call("receipt", lambda: receipt.total_fee_amount) or 0)
            error = None if success else str(self._call("receipt", lambda: receipt.error_message))
        except (ValueError, KeyError) as exc:  # "dropped" and odd answers: outcome unknown
            self.close()
            raise ChainError(f"submit failed on {self.url}: {exc!r}") from exc
        return Submission(
            success=success,
            extrinsic_hash=str(receipt.extrinsic_hash),
            block_hash=str(receipt.block_hash),
            block_number=number,
            fee=fee,
            error=error,
        )

    def find_remark(self, remark: bytes, depth: int = LOOKUP_DEPTH) -> Found | None:
        """The block (at most ``depth`` back from the best head) whose ``System.Remarked`` event
        carries ``blake2_256(remark)`` from the escrow; a remark event exists only if the whole
        ``batch_all`` succeeded."""
        wanted = remark_hash(remark)
        escrow = self.escrow_address if self.keypair is not None else None
        for number, block_hash, events in self._recent_events(depth):
            for event in events:
                value = event.value
                if value["module_id"] != "System" or value["event_id"] != "Remarked":
                    continue
                attributes = value["attributes"] or {}
                if attributes.get("hash") != wanted:
                    continue
                if escrow is not None and not same_account(attributes.get("sender", ""), escrow):
                    continue
                index = int(value.get("extrinsic_idx") or 0)
                return Found(block_hash, number, index, self._extrinsic_hash(block_hash, index))
        return None

    def _extrinsic_hash(self, block_hash: str, index: int) -> str | None:
        block = self._call("block", self.substrate.get_block, block_hash=block_hash)
        extrinsics = block["extrinsics"]
        if index < len(extrinsics) and extrinsics[index].extrinsic_hash:
            return "0x" + extrinsics[index].extrinsic_hash.hex()
        return None

    def find_extrinsic(self, extrinsic_hash: str, depth: int = LOOKUP_DEPTH) -> Found | None:
        """The block holding a successful extrinsic with this hash (the TickStream path, which
        has no remark to look for)."""
        s = self.substrate
        wanted = extrinsic_hash.removeprefix("0x")
        for number, block_hash, events in self._recent_events(depth):
            block = self._call("block", s.get_block, block_hash=block_hash)
            for index, extrinsic in enumerate(block["extrinsics"]):
                if extrinsic.extrinsic_hash and extrinsic.extrinsic_hash.hex() == wanted:
                    ok = any(
                        e.value.get("extrinsic_idx") == index
                        and e.value["module_id"] == "System"
                        and e.value["event_id"] == "ExtrinsicSuccess"
                        for e in events
                    )
                    return Found(block_hash, number, index, extrinsic_hash) if ok else None
        return None

    def _recent_events(self, depth: int) -> Any:
        s = self.substrate
        head = self._call("head", s.get_block_header)
        top = int(head["header"]["number"])
        for number in range(top, max(0, top - depth), -1):
            block_hash = self._call("block hash", s.get_block_hash, number)
            if block_hash is None:
                continue
            yield number, block_hash, self._call("events", s.get_events, block_hash=block_hash)

    # -- deposits ---------------------------------------------------------------------------
    def transfers_to(self, address: str, number: int) -> list[Transfer]:
        """``Balances.Transfer`` events of block ``number`` whose ``to`` is ``address``."""
        s = self.substrate
        block_hash = self._call("block hash", s.get_block_hash, number)
        if block_hash is None:
            return []
        found: list[Transfer] = []
        events = self._call("events", s.get_events, block_hash=block_hash)
        for position, event in enumerate(events):
            value = event.value
            if value["module_id"] != "Balances" or value["event_id"] != "Transfer":
                continue
            attributes = value["attributes"] or {}
            if not same_account(attributes.get("to", ""), address):
                continue
            extrinsic_idx = value.get("extrinsic_idx")
            found.append(
                Transfer(
                    key=f"{block_hash}:{extrinsic_idx}:{position}",
                    block_number=number,
                    sender=str(attributes["from"]),
                    amount=int(attributes["amount"]),
                )
            )
        return found
