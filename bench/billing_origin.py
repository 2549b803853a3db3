"""Origin segment requests per second with billing on vs off (the same client, the same files).

    .venv/bin/python bench/billing_origin.py [--seconds 5] [--rounds 3] [--concurrency 32]

The origin runs in a child process (one core); an aiohttp client in this process fetches
``--segments`` media segments of ``--size`` bytes round-robin, as ``--viewers`` viewers, always
with the same tokened URLs (``?token=…``: ignored where nothing checks it), so every mode sends
identical requests and only the server's work differs. Modes:

* ``off``: no billing gate (the origin as before billing);
* ``free``: the gate, on a free channel (price looked up in the cache, nothing else);
* ``on``: the gate on a priced channel: every request carries a playback token that is verified,
  the viewer's allowance is checked, and every segment served is a fetch event for the real
  :class:`BillingService` (flushing to SQLite every second in the background).

Rounds alternate the modes so drift hits them alike; the table shows the median round.
``origin_benchmark()`` returns the figures for ``bench/billing.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SLUG = "bench"
PRICE = 1
MODES = ("off", "free", "on")


def _write_media(root: Path, segments: int, size: int) -> None:
    folder = root / "media" / SLUG / "source"
    folder.mkdir(parents=True)
    payload = bytes(range(256)) * (size // 256 + 1)
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
    for sequence in range(segments):
        (folder / f"s1-seg-{sequence}.m4s").write_bytes(payload[:size])
        lines += ["#EXTINF:2.000,", f"s1-seg-{sequence}.m4s"]
    (folder / "index.m3u8").write_text("\n".join(lines) + "\n")


def _serve(mode: str, data: str, viewers: int, ready: Any, stop: Any) -> None:
    """Child process: the origin app with or without the gate; sends (port, tokens)."""
    from aiohttp import web

    from vilokanam.billing.ledger import Ledger
    from vilokanam.billing.service import BillingService
    from vilokanam.billing.tokens import issue
    from vilokanam.config import Settings
    from vilokanam.origin.gate import BillingGate, ChannelCache, SegmentDurations, channel_lookup
    from vilokanam.origin.http import create_app
    from vilokanam.store import Store

    settings = Settings.model_validate({"data_dir": data, "log_level": "warning"})
    store = Store(settings.database_url)
    secret = b"bench-secret-0123456789abcdef0123"
    if store.list_channels() == []:
        store.create_channel(SLUG, "Bench", price_per_second=PRICE)
        for index in range(viewers):
            viewer, _ = store.create_viewer(f"v{index}")
            assert viewer.id is not None
            Ledger(store).deposit(viewer.id, 10**15, f"bench:{viewer.id}")
    store.update_channel(SLUG, price_per_second=PRICE if mode == "on" else 0)
    ids = [viewer.id for viewer in store.list_viewers()]
    tokens = [issue(secret, int(i or 0), SLUG, int(time.time()) + 3600) for i in ids]

    async def main() -> None:
        service = BillingService(store, settings)
        gate = None
        if mode != "off":
            await service.start()
            gate = BillingGate(
                service, ChannelCache(channel_lookup(store)), secret, SegmentDurations(None)
            )
        app = create_app(settings, Path(data) / "media", lambda slug: slug, gate=gate)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.send((port, tokens))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ready.recv)  # the client's warm-up is over
        cpu = time.process_time()
        await loop.run_in_executor(None, stop.wait)
        cpu = time.process_time() - cpu
        if gate is not None:
            await service.stop()
        ready.send((cpu, len(service.tracker), service.flushes))
        await runner.cleanup()

    asyncio.run(main())


async def _load(  # type: ignore[no-untyped-def]
    port: int, tokens: list[str], seconds: float, concurrency: int, segments: int, warm: Any
):
    import aiohttp

    base = f"http://127.0.0.1:{port}/live/{SLUG}/source"
    done = 0
    errors = 0
    deadline = 0.0

    async def worker(number: int, session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        sequence = number
        while time.perf_counter() < deadline:
            url = f"{base}/s1-seg-{sequence % segments}.m4s"
            if tokens:
                url += f"?token={tokens[number % len(tokens)]}"
            async with session.get(url) as response:
                await response.read()
                if response.status == 200:
                    done += 1
                else:
                    errors += 1
            sequence += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + 0.5  # warm-up
        await asyncio.gather(*(worker(n, session) for n in range(concurrency)))
        warm()
        done = errors = 0
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(worker(n, session) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return done / elapsed, errors, done


def _round(mode: str, data: str, args: argparse.Namespace) -> tuple[float, int, float, int]:
    """One mode in a fresh origin process: (requests/s, errors, server CPU µs per request,
    fetch-event flushes)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    stop = context.Event()
    process = context.Process(target=_serve, args=(mode, data, args.viewers, child, stop))
    process.start()
    try:
        port, tokens = parent.recv()
        rate, errors, done = asyncio.run(
            _load(
                port,
                tokens,
                args.seconds,
                args.concurrency,
                args.segments,
                lambda: parent.send("warm"),
            )
        )
        stop.set()
        cpu, _tracked, flushes = parent.recv()
    finally:
        stop.set()
        process.join(30)
    return rate, errors, cpu * 1e6 / max(done, 1), flushes


def gate_cost(requests: int = 20_000, viewers: int = 50) -> dict[str, float]:
    """In-process µs per request of the gate alone (no HTTP): admit a tokened segment request
    (price from the cache, token, allowance), then note the fetch with the real service."""
    from aiohttp.test_utils import make_mocked_request

    from vilokanam.billing.ledger import Ledger
    from vilokanam.billing.service import BillingService
    from vilokanam.billing.tokens import issue
    from vilokanam.config import Settings
    from vilokanam.origin.gate import BillingGate, ChannelCache, SegmentDurations, channel_lookup
    from vilokanam.store import Store

    async def run(data: str) -> dict[str, float]:
        settings = Settings.model_validate({"data_dir": data})
        store = Store(settings.database_url)
        store.create_channel(SLUG, "Bench", price_per_second=PRICE)
        secret = b"bench-secret-0123456789abcdef0123"
        tokens = []
        for index in range(viewers):
            viewer, _ = store.create_viewer(f"v{index}")
            assert viewer.id is not None
            Ledger(store).deposit(viewer.id, 10**15, f"bench:{viewer.id}")
            tokens.append(issue(secret, viewer.id, SLUG, int(time.time()) + 3600))
        service = BillingService(store, settings)
        await service.start()
        gate = BillingGate(
            service, ChannelCache(channel_lookup(store)), secret, SegmentDurations(None)
        )
        folder = Path(data) / "media" / SLUG / "source"
        files = [folder / f"s1-seg-{n}.m4s" for n in range(200)]
        calls = [
            make_mocked_request(
                "GET", f"/live/{SLUG}/source/{files[n % 200].name}?token={tokens[n % viewers]}"
            )
            for n in range(1000)
        ]
        for request in calls[:viewers]:
            await gate.admit(request, SLUG)  # first sight: balances loaded
        started = time.perf_counter()
        for n in range(requests):
            await gate.admit(calls[n % 1000], SLUG)
        admit = (time.perf_counter() - started) / requests
        started = time.perf_counter()
        for n in range(requests):
            admission = await gate.admit(calls[n % 1000], SLUG)
            assert admission is not None
            # What serve_segment does per request, and what it calls once the file went out.
            gate.serve_segment(calls[n % 1000], files[n % 200], {}, admission)
            sequence = n % 200
            duration = gate.durations.duration(1, sequence, files[sequence])
            assert duration is not None
            service.note_fetch(admission.viewer_id, admission.channel, 1, sequence, duration)
        both = (time.perf_counter() - started) / requests
        await service.stop()
        store.close()
        return {"admit_us": admit * 1e6, "admit_and_note_us": both * 1e6}

    with tempfile.TemporaryDirectory(prefix="vk-bench-") as data:
        _write_media(Path(data), 200, 16)
        return asyncio.run(run(data))


def origin_benchmark(
    seconds: float = 5.0,
    rounds: int = 3,
    concurrency: int = 32,
    segments: int = 200,
    size: int = 64 * 1024,
    viewers: int = 50,
) -> dict[str, Any]:
    """Segment requests/s per mode (median of ``rounds``) and the overhead of ``on`` vs ``off``."""
    args = argparse.Namespace(
        seconds=seconds, concurrency=concurrency, segments=segments, viewers=viewers
    )
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    errors = flushes = 0
    with tempfile.TemporaryDirectory(prefix="vk-bench-") as data:
        _write_media(Path(data), segments, size)
        for _ in range(rounds):
            for mode in MODES:
                rate, failed, per_request, flushed = _round(mode, data, args)
                rates[mode].append(rate)
                cpu[mode].append(per_request)
                errors += failed
                flushes += flushed
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    cpu_medians = {mode: statistics.median(values) for mode, values in cpu.items()}
    return {
        "requests_per_second": medians,
        "rounds": rates,
        "server_cpu_us_per_request": cpu_medians,
        "overhead_on_vs_off": 1 - medians["on"] / medians["off"],
        "cpu_overhead_on_vs_off": cpu_medians["on"] / cpu_medians["off"] - 1,
        "errors": errors,
        "flushes": flushes,
        "segment_bytes": size,
        "concurrency": concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--segments", type=int, default=200)
    parser.add_argument("--size", type=int, default=64 * 1024, help="segment bytes")
    parser.add_argument("--viewers", type=int, default=50)
    args = parser.parse_args()
    result = origin_benchmark(
        args.seconds, args.rounds, args.concurrency, args.segments, args.size, args.viewers
    )
    gate = gate_cost()
    rps = result["requests_per_second"]
    print(f"segment {args.size // 1024} KiB, {args.concurrency} connections, median of rounds")
    cpu = result["server_cpu_us_per_request"]
    print(f"{'mode':<6} {'requests/s':>11} {'vs off':>8} {'server CPU/req':>15}   rounds (req/s)")
    for mode in MODES:
        change = rps[mode] / rps["off"] - 1
        rounds = ", ".join(f"{value:.0f}" for value in result["rounds"][mode])
        print(f"{mode:<6} {rps[mode]:>11.0f} {change:>+8.1%} {cpu[mode]:>12.0f} µs   {rounds}")
    print(
        f"billing overhead: {result['overhead_on_vs_off']:.1%} in requests/s, "
        f"{result['cpu_overhead_on_vs_off']:+.1%} in server CPU per request (target < 10 %)"
    )
    print(
        f"the gate alone, in process: {gate['admit_us']:.1f} µs to admit a tokened request, "
        f"{gate['admit_and_note_us']:.1f} µs with the fetch event "
        f"({gate['admit_and_note_us'] / cpu['off']:.1%} of an unbilled request's server CPU)"
    )
    if result["errors"]:
        print(f"errors: {result['errors']} non-200 answers")


if __name__ == "__main__":
    main()
