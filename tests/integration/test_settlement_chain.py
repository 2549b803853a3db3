"""Settlement and deposits against a real Substrate runtime (chopsticks, Rococo Asset Hub).

One chain per module: balances are compared before/after, creators are fresh accounts per test.
The last test stops the chain and starts a fresh one.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from substrateinterface import Keypair, SubstrateInterface
from substrateinterface.utils.hasher import blake2_256

from tests.chain import Chopsticks
from tests.conftest import make_settings
from vilokanam.billing.ledger import Ledger
from vilokanam.billing.settlement.batches import batch_entries, get_batch
from vilokanam.billing.settlement.chain import BatchInvalid, ChainClient
from vilokanam.billing.settlement.settler import Settler
from vilokanam.billing.settlement.watcher import CURSOR, DepositWatcher
from vilokanam.config import Settings
from vilokanam.store.models import BatchState, ChainCursor, ChainDeposit, Channel, EntryKind
from vilokanam.store.store import Store

SS58 = 2
PRICE = 1_000_000  # planck per second: payouts well above the existential deposit (3,333,333)
FEE_BPS = 1000


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs, nothing catches it."""


def setup(tmp_path: Path, url: str) -> tuple[Settings, Store, Ledger]:
    seed = tmp_path / "escrow-seed"
    seed.write_text("//Alice\n")
    seed.chmod(0o600)
    settings = make_settings(
        tmp_path / "data",
        billing={"settlement": "substrate", "settle_interval": 1, "platform_fee_bps": FEE_BPS},
        chain={"url": url, "ss58_format": SS58, "escrow_seed_file": str(seed), "timeout": 10},
    )
    store = Store(settings.database_url)
    return settings, store, Ledger(store)


def new_creator(store: Store, slug: str, paid: bool = True) -> tuple[int, str]:
    """A channel paying out to a fresh account (or to none); returns (channel id, address)."""
    address = Keypair.create_from_uri(
        f"//creator-{uuid.uuid4().hex}", ss58_format=SS58
    ).ss58_address
    channel, _ = store.create_channel(slug)
    with store.session() as db:
        row = db.get(Channel, channel.id)
        assert row is not None
        row.payout_address = address if paid else None
        db.add(row)
        db.commit()
    assert channel.id is not None
    return channel.id, address


def watch(ledger: Ledger, viewer_id: int, channel_id: int, n: int, seconds: int) -> int:
    """A watch entry of ``seconds`` ticks; returns the creator's part."""
    gross = seconds * PRICE
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
        session_id=channel_id,
        seconds=seconds,
        amount=gross,
    )
    assert entry is not None
    return gross - fee


def free(url: str, address: str) -> int:
    client = ChainClient(url, ss58_format=SS58)
    try:
        return client.free_balance(address)
    finally:
        client.close()


def nonce(url: str, address: str) -> int:
    s = SubstrateInterface(url=url, ss58_format=SS58)
    try:
        return int(s.query("System", "Account", [address]).value["nonce"])
    finally:
        s.close()


def transfer(url: str, sender: str, dest: str, amount: int) -> Any:
    s = SubstrateInterface(url=url, ss58_format=SS58)
    try:
        call = s.compose_call("Balances", "transfer", {"dest": dest, "value": amount})
        keypair = Keypair.create_from_uri(sender, ss58_format=SS58)
        receipt = s.submit_extrinsic(
            s.create_signed_extrinsic(call=call, keypair=keypair), wait_for_finalization=True
        )
        assert receipt.is_success, receipt.error_message
        return receipt
    finally:
        s.close()


def escrow() -> str:
    return Keypair.create_from_uri("//Alice", ss58_format=SS58).ss58_address


def test_deposit_credited_once_across_watcher_restarts(
    tmp_path: Path, chopsticks: Chopsticks
) -> None:
    url = chopsticks.ensure_running()
    settings, store, ledger = setup(tmp_path, url)
    bob = Keypair.create_from_uri("//Bob", ss58_format=SS58).ss58_address
    viewer, _ = store.create_viewer("bob", address=bob)
    assert viewer.id is not None
    amount = 5 * 10**12
    transfer(url, "//Bob", escrow(), amount)
    transfer(url, "//Charlie", escrow(), 10**12)  # not a registered viewer: kept, not credited

    credited: list[int] = []
    assert asyncio.run(DepositWatcher(settings, store, on_credit=credited.append).poll()) == 1
    assert ledger.viewer_balance(viewer.id) == amount
    assert credited == [viewer.id]  # told after the commit, once
    assert DepositWatcher(settings, store).scan() == 0  # a restarted watcher: nothing new
    with store.session() as db:  # re-scan the chain from block 0
        cursor = db.get(ChainCursor, CURSOR)
        assert cursor is not None and cursor.block_number > 0
        cursor.block_number = 0
        db.add(cursor)
        db.commit()
    assert DepositWatcher(settings, store).scan() == 0
    assert ledger.viewer_balance(viewer.id) == amount
    with store.session() as db:
        deposits = db.exec(select(ChainDeposit)).all()
    assert sorted((d.amount, d.viewer_id) for d in deposits) == [
        (10**12, None),
        (amount, viewer.id),
    ]
    assert ledger.sum_of_all_postings() == 0


async def test_settlement_pays_creators_exactly_and_remark_matches_ledger(
    tmp_path: Path, chopsticks: Chopsticks
) -> None:
    url = chopsticks.ensure_running()
    settings, store, ledger = setup(tmp_path, url)
    viewer, _ = store.create_viewer("viewer")
    assert viewer.id is not None
    (a, a_addr), (b, b_addr) = new_creator(store, "alpha"), new_creator(store, "beta")
    unpaid, _ = new_creator(store, "nopayout", paid=False)
    due = {a: watch(ledger, viewer.id, a, 0, 10) + watch(ledger, viewer.id, a, 1, 20)}
    due[b] = watch(ledger, viewer.id, b, 0, 7)
    watch(ledger, viewer.id, unpaid, 0, 5)
    before = {a_addr: free(url, a_addr), b_addr: free(url, b_addr)}

    settler = Settler(settings, store)
    summary = await settler.settle_now()
    await settler.stop()

    assert summary["state"] == "confirmed" and summary["ticks"] == 37
    assert free(url, a_addr) - before[a_addr] == due[a]
    assert free(url, b_addr) - before[b_addr] == due[b]
    # the digest is the ledger's: recompute it from the batch's entries
    entries = batch_entries(store, summary["batch_id"])
    lines = sorted(f"{e.key}\t{e.seconds}\t{e.amount}\n" for e in entries)
    assert summary["digest"] == hashlib.sha256("".join(lines).encode()).hexdigest()
    remark = f"vilokanam:batch:{summary['batch_id']}:{summary['digest']}".encode()
    s = SubstrateInterface(url=url, ss58_format=SS58)
    try:
        hashes = [
            e.value["attributes"]["hash"]
            for e in s.get_events(block_hash=summary["block_hash"])
            if (e.value["module_id"], e.value["event_id"]) == ("System", "Remarked")
        ]
    finally:
        s.close()
    assert hashes == ["0x" + blake2_256(remark).hex()]
    # the ledger: payouts posted, the channel without an address still unsettled
    assert ledger.balance("payouts") == due[a] + due[b]
    assert ledger.balance(f"creator:{a}") == ledger.balance(f"creator:{b}") == 0
    assert [e.channel_id for e in ledger.unsettled_watch_entries()] == [unpaid]
    assert ledger.sum_of_all_postings() == 0


async def test_crash_between_submit_and_record_pays_once_even_after_a_long_outage(
    tmp_path: Path, chopsticks: Chopsticks
) -> None:
    url = chopsticks.ensure_running()
    settings, store, ledger = setup(tmp_path, url)
    viewer, _ = store.create_viewer("viewer")
    assert viewer.id is not None
    channel, address = new_creator(store, "crashy")
    due = watch(ledger, viewer.id, channel, 0, 42)
    nonce_before = nonce(url, escrow())

    crashing = Settler(settings, store)

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    crashing.backend._confirm = killed  # type: ignore[method-assign,union-attr]
    with pytest.raises(Crash):
        crashing.backend.settle()  # submitted and included; never recorded
    [pending] = [b for b in _batches(store) if b.state == BatchState.SUBMITTED]
    assert pending.nonce == nonce_before and pending.genesis_hash and pending.submitted_block
    assert free(url, address) == due
    # a long outage (the reviewer's double payment): the chain moves on past any look-back
    # window; the batch's nonce is used, so it is looked up from its height, never sent again
    s = SubstrateInterface(url=url, ss58_format=SS58)
    try:
        s.rpc_request("dev_newBlock", [{"count": 4}])
        assert s.get_block_number(None) >= pending.submitted_block + 5
    finally:
        s.close()

    restarted = Settler(settings, store)
    summary = await restarted.settle_now()
    await restarted.stop()
    [recovered] = summary["recovered"]
    assert recovered["batch_id"] == pending.id and recovered["state"] == "confirmed"
    assert summary["state"] == "empty"
    assert free(url, address) == due  # paid once
    assert nonce(url, escrow()) == nonce_before + 1  # one extrinsic from the escrow
    assert ledger.balance("payouts") == due
    assert ledger.sum_of_all_postings() == 0


def test_bad_payout_address_fails_composing_not_the_chain(chopsticks: Chopsticks) -> None:
    url = chopsticks.ensure_running()
    client = ChainClient(url, ss58_format=SS58)
    try:
        with pytest.raises(BatchInvalid):
            client.compose_batch([("1" * 47, 10**10)], b"vilokanam:batch:x:y")
    finally:
        client.close()


def _batches(store: Store) -> list[Any]:
    from vilokanam.store.models import SettlementBatch

    with store.session() as db:
        return list(db.exec(select(SettlementBatch)).all())


async def test_chain_stopped_then_restarted_settles(tmp_path: Path, chopsticks: Chopsticks) -> None:
    url = chopsticks.ensure_running()
    settings, store, ledger = setup(tmp_path, url)
    viewer, _ = store.create_viewer("viewer")
    assert viewer.id is not None
    channel, address = new_creator(store, "patient")
    first = watch(ledger, viewer.id, channel, 0, 10)

    chopsticks.stop()
    settler = Settler(settings, store)
    summary = await settler.settle_now()
    await settler.stop()
    assert summary["state"] == "prepared" and "chain unavailable" in summary["error"]
    second = watch(ledger, viewer.id, channel, 1, 15)  # ticks keep accruing
    assert [e.seconds for e in ledger.unsettled_watch_entries()] == [15]

    url = chopsticks.start()  # a fresh chain: the batch is not on it
    settings, _, _ = setup(tmp_path, url)
    settler = Settler(settings, store)
    await settler.start()  # the timer resolves the pending batch, then settles the rest
    try:
        for _ in range(200):
            if ledger.unsettled_watch_entries() == [] and all(
                b.state == BatchState.CONFIRMED for b in _batches(store)
            ):
                break
            await asyncio.sleep(0.1)
    finally:
        await settler.stop()
    batches = _batches(store)
    assert len(batches) == 2 and all(b.state == BatchState.CONFIRMED for b in batches)
    assert get_batch(store, summary["batch_id"]).state == BatchState.CONFIRMED  # type: ignore[union-attr]
    assert free(url, address) == first + second
    assert ledger.balance("payouts") == first + second
    assert ledger.sum_of_all_postings() == 0


def test_sigkill_of_the_settler_process_after_submission_pays_once(
    tmp_path: Path, chopsticks: Chopsticks
) -> None:
    """A real ``kill -9``: the settler runs in its own process and is killed the moment its
    batch shows up on chain (before it can record it); a new settler then pays nothing twice."""
    import os
    import signal
    import subprocess
    import sys
    import time

    url = chopsticks.ensure_running()
    settings, store, ledger = setup(tmp_path, url)
    viewer, _ = store.create_viewer("viewer")
    assert viewer.id is not None
    channel, address = new_creator(store, "killed")
    due = watch(ledger, viewer.id, channel, 0, 30)
    before = nonce(url, escrow())
    seed_file = settings.chain.escrow_seed_file
    env = {
        **os.environ,
        "VILOKANAM_DATA_DIR": str(settings.data_dir),
        "VILOKANAM_BILLING_SETTLEMENT": "substrate",
        "VILOKANAM_BILLING_PLATFORM_FEE_BPS": str(FEE_BPS),
        "VILOKANAM_CHAIN_URL": url,
        "VILOKANAM_CHAIN_SS58_FORMAT": str(SS58),
        "VILOKANAM_CHAIN_ESCROW_SEED_FILE": seed_file,
    }
    code = (
        "from vilokanam.config import load_settings\n"
        "from vilokanam.store import Store\n"
        "from vilokanam.billing.settlement.settler import Settler\n"
        "settings = load_settings()\n"
        "Settler(settings, Store(settings.database_url)).backend.settle()\n"
    )
    chain = SubstrateInterface(url=url, ss58_format=SS58)  # one connection: fast polling
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while chain.query("System", "Account", [escrow()]).value["nonce"] == before:
            assert child.poll() is None, "the settler ended before submitting"
            assert time.monotonic() < deadline, "no batch reached the chain"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        chain.close()
    assert child.returncode == -signal.SIGKILL, "killed before it could record the batch"
    [batch] = _batches(store)
    assert free(url, address) == due

    restarted = Settler(settings, store)
    summary = asyncio.run(_settle_and_stop(restarted))
    assert summary["state"] == "empty"
    [after] = _batches(store)
    assert after.id == batch.id and after.state == BatchState.CONFIRMED
    assert free(url, address) == due, "paid exactly once"
    assert nonce(url, escrow()) == before + 1, "one extrinsic from the escrow"
    assert ledger.balance("payouts") == due and ledger.sum_of_all_postings() == 0


async def _settle_and_stop(settler: Settler) -> dict[str, Any]:
    """Settle; while the batch is included but not finalized yet ("in flight"), again."""
    try:
        for _ in range(50):
            summary = await settler.settle_now()
            if "in flight" not in (summary.get("error") or ""):
                return summary
            await asyncio.sleep(0.1)
        return summary
    finally:
        await settler.stop()
