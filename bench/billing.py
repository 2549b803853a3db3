"""Billing hot path: fetch events per second through the tracker and the service (one core).

    .venv/bin/python bench/billing.py [--viewers 2000] [--segments 150] [--renditions 3]

Each viewer watches one priced stream: every media sequence is fetched once per rendition
(ABR switches and retries: one new sequence, the rest repeats), at real-time pace on a fake
clock. Rows: ``Tracker.note`` on prebuilt events; ``BillingService.note_fetch`` (what the origin
calls per segment: builds the event, reads the clock); the same with ``allowance`` before each
fetch (the gate's full per-segment work); then one flush of every viewer's pending ticks to a
SQLite ledger. Target: ≥ 50k events/s through the tracker on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vilokanam.billing.service import BillingService  # noqa: E402
from vilokanam.billing.tracker import Fetch, Tracker  # noqa: E402
from vilokanam.config import Settings  # noqa: E402
from vilokanam.store import Store  # noqa: E402

T0 = 1_700_000_000.0
DURATION = 2.0
TARGET_PER_SECOND = 50_000


def _order(viewers: int, segments: int, renditions: int) -> list[tuple[int, int, float]]:
    """(viewer, sequence, wall time) in the order fetches arrive: by time, viewers interleaved."""
    return [
        (viewer, sequence, T0 + sequence * DURATION + viewer * 1e-6)
        for sequence in range(segments)
        for viewer in range(viewers)
        for _ in range(renditions)
    ]


def _rate(run: Callable[[], None], events: int) -> tuple[float, float]:
    began = time.perf_counter()
    run()
    elapsed = time.perf_counter() - began
    return events / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument("--segments", type=int, default=150)
    parser.add_argument("--renditions", type=int, default=3)
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    order = _order(args.viewers, args.segments, args.renditions)
    events = len(order)
    print(
        f"{args.viewers} viewers x {args.segments} segments of {DURATION} s x "
        f"{args.renditions} fetches each = {events:,} fetch events, one core"
    )
    rows: list[tuple[str, float, float]] = []

    tracker = Tracker(DURATION)
    fetches = [Fetch(viewer, 1, sequence, DURATION, at) for viewer, sequence, at in order]
    note = tracker.note
    rate, took = _rate(lambda: [note(fetch) for fetch in fetches] and None, events)
    due = sum(d.ticks_to for d in tracker.pending())
    assert due == args.viewers * args.segments * int(DURATION), due
    rows.append(("Tracker.note", rate, took))

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        settings = Settings.model_validate({"data_dir": tmp, "hls": {"segment_duration": 2.0}})
        channel, _ = store.create_channel("bench", price_per_second=1_000)
        session = store.start_session(channel.id or 0).id or 0
        ledger = BillingService(store, settings).ledger
        for viewer in range(args.viewers):
            ledger.deposit(viewer, 10**15, f"dep:{viewer}")
        for with_allowance in (False, True):
            now = [T0]
            service = BillingService(store, settings, clock=lambda now=now: now[0])
            asyncio.run(_load_all(service, args.viewers))
            note_fetch, allowance = service.note_fetch, service.allowance

            def run(
                now: list[float] = now,
                service_note: Callable[..., None] = note_fetch,
                allow: Callable[..., str | None] = allowance,
                check: bool = with_allowance,
            ) -> None:
                for viewer, sequence, at in order:
                    now[0] = at
                    if check and allow(viewer, channel) is not None:
                        raise AssertionError("refused")
                    service_note(viewer, channel, session, sequence, DURATION)

            rate, took = _rate(run, events)
            name = "note_fetch + allowance" if with_allowance else "BillingService.note_fetch"
            rows.append((name, rate, took))
        began = time.perf_counter()
        written = asyncio.run(service.flush())
        flush_took = time.perf_counter() - began
        store.close()

    print()
    print(f"{'path':28} {'events/s':>12} {'µs/event':>10} {'target':>10}")
    for name, rate, took in rows:
        verdict = "ok" if rate >= TARGET_PER_SECOND else "SLOW"
        print(f"{name:28} {rate:>12,.0f} {took / events * 1e6:>10.2f} {verdict:>10}")
    print()
    print(
        f"one flush of {written:,} viewers' pending ticks to SQLite (one transaction): "
        f"{flush_took:.2f} s ({written / flush_took:,.0f} entries/s)"
    )


async def _load_all(service: BillingService, viewers: int) -> None:
    for viewer in range(viewers):
        await service.ensure_loaded(viewer)


if __name__ == "__main__":
    main()
