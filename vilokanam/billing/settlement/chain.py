"""A small synchronous client for the Substrate chain (substrate-interface underneath).

Everything here blocks: the server calls it through ``asyncio.to_thread``. Call and event names
are read from the runtime's metadata, so the same code works on old runtimes
(``Balances.transfer``) and new ones (``Balances.transfer_allow_death``), and uses a
``TickStream.record_tick`` pallet where the runtime has one instead of the remark.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from substrateinterface import Keypair, SubstrateInterface
from substrateinterface.exceptions import SubstrateRequestException
from substrateinterface.utils.hasher import blake2_256
from substrateinterface.utils.ss58 import ss58_decode, ss58_encode
from websocket import WebSocketException

from vilokanam.config import Settings

log = logging.getLogger(__name__)


class ChainError(Exception):
    """The chain could not be reached or did not answer in time: try again later."""


class BatchInvalid(Exception):
    """A batch could not be composed or signed (a bad address, an odd amount): it never can."""


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
class Inclusion:
    """Where the escrow's extrinsic with a given nonce was included, and what became of it."""

    success: bool
    block_hash: str
    block_number: int
    extrinsic_idx: int
    extrinsic_hash: str | None = None
    error: str | None = None
    remarks: tuple[str, ...] = ()
    """The ``System.Remarked`` hashes the extrinsic emitted (a successful batch has its own)."""


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

    def finalized_head(self) -> tuple[int, str]:
        """Number and hash of the finalized head."""
        s = self.substrate
        head = self._call("finalized head", s.rpc_request, "chain_getFinalizedHead", [])
        block_hash = str(head["result"])
        return int(self._call("block number", s.get_block_number, block_hash)), block_hash

    def escrow_nonce(self) -> int:
        """The escrow's nonce in the finalized state: extrinsics of it included for good."""
        s = self.substrate
        _, block_hash = self.finalized_head()
        account = self._call(
            "query", s.query, "System", "Account", [self.escrow_address], block_hash=block_hash
        )
        return int(account.value["nonce"])

    def escrow_next_nonce(self) -> int:
        """The escrow's next nonce as the node sees it: best block and transaction pool."""
        s = self.substrate
        answer = self._call(
            "next index", s.rpc_request, "system_accountNextIndex", [self.escrow_address]
        )
        return int(answer["result"])

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
        try:
            return self._compose_batch(payouts, remark, ticks)
        except (ChainError, BatchInvalid):
            raise
        except (SubstrateRequestException, OSError, WebSocketException) as exc:
            self.close()
            raise ChainError(f"compose failed on {self.url}: {exc!r}") from exc
        except Exception as exc:  # encoding: a bad address or amount: this batch never composes
            raise BatchInvalid(f"cannot compose the batch: {exc!r}") from exc

    def _compose_batch(
        self, payouts: list[tuple[str, int]], remark: bytes, ticks: list[TickRecord] | None
    ) -> Any:
        s = self.substrate
        self._call("metadata", s.init_runtime)
        transfer = self.transfer_function()
        calls = [
            s.compose_call("Balances", transfer, {"dest": address, "value": amount})
            for address, amount in payouts
        ]
        if ticks and self.has_tick_stream():
            calls += [
                s.compose_call(
                    "TickStream",
                    "record_tick",
                    {"stream_id": t.stream_id, "viewer": t.viewer, "ticks": t.ticks},
                )
                for t in ticks
            ]
        else:
            calls.append(s.compose_call("System", "remark_with_event", {"remark": remark}))
        return s.compose_call("Utility", "batch_all", {"calls": calls})

    @staticmethod
    def extrinsic_hash(extrinsic: Any) -> str:
        return "0x" + extrinsic.extrinsic_hash.hex()

    def sign(self, call: Any, nonce: int) -> Any:
        """The signed extrinsic from the escrow with ``nonce`` (immortal: the nonce alone makes
        it run at most once, and at most one extrinsic with that nonce can ever be included)."""
        if self.keypair is None:
            raise EscrowSeedMissing("no escrow keypair: cannot sign")
        try:
            return self._call(
                "sign",
                self.substrate.create_signed_extrinsic,
                call=call,
                keypair=self.keypair,
                nonce=nonce,
            )
        except SubstrateRequestException as exc:
            raise ChainError(f"sign failed on {self.url}: {exc!r}") from exc
        except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
            raise BatchInvalid(f"cannot sign the batch: {exc!r}") from exc

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
        except SubstrateRequestException as exc:  # refused by the pool (stale nonce, fees…)
            raise ChainError(f"submit refused by {self.url}: {exc}") from exc
        return Submission(
            success=success,
            extrinsic_hash=str(receipt.extrinsic_hash),
            block_hash=str(receipt.block_hash),
            block_number=number,
            fee=fee,
            error=error,
        )

    def find_nonce(self, nonce: int, start: int, *, log_every: int = 1000) -> Inclusion | None:
        """The escrow's extrinsic signed with ``nonce`` in the finalized blocks from ``start`` to
        the finalized head, and its outcome; None when no such block holds it. Scans forward
        (the extrinsic is usually a few blocks after ``start``), logging progress on long runs."""
        s = self.substrate
        escrow = ss58_decode(self.escrow_address)
        head = self.finalized_number()
        first = max(0, start)
        began = time.monotonic()
        for number in range(first, head + 1):
            if number > first and (number - first) % log_every == 0:
                log.info("settlement: looking for escrow nonce %d: block %d of %d..%d (%.0f s)",
                         nonce, number, first, head, time.monotonic() - began)  # fmt: skip
            block_hash = self._call("block hash", s.get_block_hash, number)
            if block_hash is None:
                continue
            block = self._call("block", s.get_block, block_hash=block_hash)
            for index, extrinsic in enumerate(block["extrinsics"]):
                value = extrinsic.value
                if not isinstance(value, dict) or "address" not in value:
                    continue  # unsigned (inherents)
                if value.get("nonce") is None or int(value["nonce"]) != nonce:
                    continue
                if _account_id(value["address"]) != escrow:
                    continue
                events = self._call("events", s.get_events, block_hash=block_hash)
                return _inclusion(block_hash, number, index, extrinsic, events)
        return None

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


def _account_id(address: Any) -> str | None:
    """The account id (hex, no 0x) of an extrinsic's ``address`` (ss58, hex or ``{"Id": …}``)."""
    if isinstance(address, dict):
        address = address.get("Id", next(iter(address.values()), None))
    if not isinstance(address, str):
        return None
    if address.startswith("0x"):
        return address[2:].lower()
    try:
        return str(ss58_decode(address)).lower()
    except ValueError:
        return None


def _inclusion(block_hash: str, number: int, index: int, extrinsic: Any, events: Any) -> Inclusion:
    """The outcome of extrinsic ``index`` from its block's events."""
    own = [e.value for e in events if e.value.get("extrinsic_idx") == index]
    success = any((v["module_id"], v["event_id"]) == ("System", "ExtrinsicSuccess") for v in own)
    error = None
    if not success:
        failed = [
            v for v in own if (v["module_id"], v["event_id"]) == ("System", "ExtrinsicFailed")
        ]
        error = str((failed[0]["attributes"] or {}).get("dispatch_error")) if failed else "unknown"
    remarks = tuple(
        str((v["attributes"] or {}).get("hash"))
        for v in own
        if (v["module_id"], v["event_id"]) == ("System", "Remarked")
    )
    extrinsic_hash = extrinsic.extrinsic_hash
    return Inclusion(
        success=success,
        block_hash=str(block_hash),
        block_number=number,
        extrinsic_idx=index,
        extrinsic_hash="0x" + extrinsic_hash.hex() if extrinsic_hash else None,
        error=error,
        remarks=remarks,
    )
