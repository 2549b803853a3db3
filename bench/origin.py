"""Segments served per second by our origin vs nginx on the same files; S3 upload throughput.

    .venv/bin/python bench/origin.py [--duration 5] [--rounds 3] [--connections 64]
        [--size 750K,200K] [--segments 60] [--uploads 100] [--profile] [--skip-http|--skip-s3]

**Origin vs nginx.** A live stream's media tree (``streams/1/{rendition}/s1-seg-N.m4s``, init
segment, ``index.m3u8`` per rendition, ``master.m3u8``) is written once, one rendition per
``--size`` (2 s segments: 3 Mbit/s ≈ 750 KB, 800 kbit/s ≈ 200 KB). Our origin is the real
``create_app`` wired as ``vilokanam serve`` wires it (metrics middleware, viewer counting, the
billing gate on a free channel) in a child process: one event loop, so nginx gets
``worker_processes 1`` (``sendfile on``, ``access_log off``, the same Cache-Control and CORS
headers), both pinned to the same core, ``wrk`` on the others. wrk cycles over every segment
of a rendition (each connection starting elsewhere), so no one hot file; a last workload is the
media playlist. Rounds alternate which server goes first; the table shows medians.

**S3 upload.** moto's server (in a child process, so it does not share our GIL) takes
``--uploads`` segments per run from ``vilokanam.origin.s3.S3Storage.publish_segment`` (all
submitted at once, ``upload_concurrency`` 1, 4, 8) and from plain boto3 ``put_object`` (a loop;
a thread pool of the same width for 4 and 8), alternating, median of ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import logging
import multiprocessing
import os
import pstats
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SLUG = "bench"
PREFIX = "streams/1"
WINDOW = 6  # segments in a live media playlist
CONCURRENCIES = (1, 4, 8)
BUCKET = "vilokanam-bench"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
HEADERS = {  # what our origin adds to every segment; nginx sends the same
    "Cache-Control": "public, max-age=31536000, immutable",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, Authorization",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range",
}


def parse_sizes(text: str) -> list[int]:
    """``"750K,200K"`` → bytes (K = 1000, M = 1000000: bitrate arithmetic)."""
    units = {"": 1, "K": 1000, "M": 1_000_000}
    sizes = []
    for part in text.upper().split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KM]?)B?\s*", part)
        if match is None:
            raise argparse.ArgumentTypeError(f"bad size {part!r} (e.g. 750K, 1.5M, 4096)")
        sizes.append(int(float(match[1]) * units[match[2]]))
    return sizes


def rendition_name(size: int) -> str:
    return f"{round(size / 1000)}k"


def write_tree(media: Path, sizes: list[int], segments: int) -> list[str]:
    """A live stream's files under ``media/streams/1``; returns the rendition folder names."""
    stream = media / PREFIX
    names = []
    variants = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for size in sizes:
        name = rendition_name(size)
        folder = stream / name
        folder.mkdir(parents=True)
        payload = os.urandom(size)
        (folder / "init.mp4").write_bytes(os.urandom(900))
        for sequence in range(segments):
            (folder / f"s1-seg-{sequence}.m4s").write_bytes(payload)
        first = max(0, segments - WINDOW)
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7",
            "#EXT-X-TARGETDURATION:2",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
            '#EXT-X-MAP:URI="init.mp4"',
            "#EXT-X-PROGRAM-DATE-TIME:2025-01-01T00:00:00.000Z",
        ]
        for sequence in range(first, segments):
            lines += ["#EXTINF:2.000,", f"s1-seg-{sequence}.m4s"]
        (folder / "index.m3u8").write_text("\n".join(lines) + "\n")
        bandwidth = size * 8 // 2
        variants += [f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS="avc1.64001f,mp4a.40.2"']
        variants += [f"{name}/index.m3u8"]
        names.append(name)
    (stream / "master.m3u8").write_text("\n".join(variants) + "\n")
    return names


# --- the servers -------------------------------------------------------------------------------


def _serve_origin(media: str, data: str, cpus: set[int], profile: bool, conn: Any) -> None:
    """Child process: our origin as ``vilokanam serve`` builds it; sends its port, serves until
    told to stop, then sends the profile (or None)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    from aiohttp import web

    from vilokanam.billing.service import BillingService
    from vilokanam.config import Settings
    from vilokanam.origin.gate import BillingGate, ChannelCache, SegmentDurations, channel_lookup
    from vilokanam.origin.http import create_app
    from vilokanam.origin.metrics import ServerMetrics
    from vilokanam.origin.viewers import ViewerCounter
    from vilokanam.store import Store

    settings = Settings.model_validate({"data_dir": data, "log_level": "warning"})
    store = Store(settings.database_url)
    if not store.list_channels():
        store.create_channel(SLUG, "Bench")  # free: the gate looks the price up, bills nothing

    async def main() -> None:
        service = BillingService(store, settings)
        await service.start()
        gate = BillingGate(
            service, ChannelCache(channel_lookup(store)), b"bench-secret-0123456789abcdef0123",
            SegmentDurations(None),
        )  # fmt: skip
        viewers = ViewerCounter(settings.http.viewer_timeout)
        app = create_app(
            settings,
            Path(media),
            lambda slug: PREFIX if slug == SLUG else None,
            metrics=ServerMetrics(None, viewers),
            viewers=viewers,
            gate=gate,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()
        await service.stop()

    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    asyncio.run(main())
    if profiler is None:
        conn.send(None)
        return
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    conn.send(out.getvalue())


@contextlib.contextmanager
def our_origin(
    media: Path, data: Path, cpus: set[int], profile: bool = False
) -> Iterator[tuple[int, int, Callable[[], str | None]]]:
    """(port, pid, stop) of our origin in a child process; ``stop()`` returns the profile."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_serve_origin, args=(str(media), str(data), cpus, profile, child)
    )
    process.start()
    report: list[str | None] = []

    def stop() -> str | None:
        if not report:
            parent.send("stop")
            report.append(parent.recv())
        return report[0]

    try:
        if not parent.poll(60):
            raise SystemExit("our origin did not start within 60 s")
        yield parent.recv(), process.pid or 0, stop
    finally:
        if process.is_alive():
            with contextlib.suppress(OSError, EOFError):
                stop()
        process.join(30)
        if process.is_alive():
            process.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"nginx exited ({process.returncode}):\n{_tail(log)}")
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    raise SystemExit(f"nginx is not listening on {port} after 10 s:\n{_tail(log)}")


def _tail(stderr: Path) -> str:
    logs = [stderr, stderr.with_name("error.log")]
    return "\n".join(path.read_text()[-2000:] for path in logs if path.exists())


def nginx_conf(prefix: Path, media: Path, port: int, workers: int) -> str:
    headers = "\n".join(
        f'            add_header {key} "{value}" always;'
        for key, value in HEADERS.items()
        if key != "Cache-Control"
    )
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/temp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
worker_processes {workers};
pid {prefix}/logs/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{temp}
    types {{
        application/vnd.apple.mpegurl m3u8;
        video/iso.segment m4s;
        video/mp4 mp4;
    }}
    default_type application/octet-stream;
    map $uri $cache_control {{
        ~\\.m3u8$ "no-cache, no-store";
        default "{HEADERS["Cache-Control"]}";
    }}
    server {{
        listen 127.0.0.1:{port};
        location /live/{SLUG}/ {{
            alias {media / PREFIX}/;
            add_header Cache-Control $cache_control always;
{headers}
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(
    binary: str, base: Path, media: Path, cpus: set[int], workers: int
) -> Iterator[tuple[int, int]]:
    """(port, pid) of nginx serving ``media`` from disk, run as nobody when we are root."""
    prefix = base / "nginx"
    for folder in ("conf", "logs", "temp"):
        (prefix / folder).mkdir(parents=True)
    port = _free_port()
    (prefix / "conf/nginx.conf").write_text(nginx_conf(prefix, media, port, workers))
    command = [binary, "-p", str(prefix), "-c", "conf/nginx.conf", "-e", "logs/error.log"]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for folder in (prefix / "logs", prefix / "temp"):
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        command = ["runuser", "-u", "nobody", "--", *command]
    stderr = prefix / "logs/stderr.log"  # runuser says "Session terminated" when stopped
    with open(stderr, "wb") as errors:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stderr=errors,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    try:
        _wait_listening(port, process, stderr)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU of ``root_pid`` and its descendants (threads included)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    family = {root_pid}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    return sum(times.get(pid, 0.0) for pid in family)


# --- the client --------------------------------------------------------------------------------

WRK_SCRIPT = """
local paths = {%s}
local requests = {}
local at = 1
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  for i, path in ipairs(paths) do requests[i] = wrk.format("GET", path) end
  at = (id * 17) %% #paths + 1
end
function request()
  local r = requests[at]
  at = at %% #requests + 1
  return r
end
function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format("BENCH %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.bytes,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class Sample:
    rps: float
    mbps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: int


def run_wrk(
    wrk: str, port: int, paths: list[str], args: argparse.Namespace, server_pid: int, base: Path
) -> Sample:
    """One wrk run cycling over ``paths``; the server's CPU per request from /proc."""
    script = base / "cycle.lua"
    script.write_text(WRK_SCRIPT % ", ".join(f'"{path}"' for path in paths))
    command = [
        wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s",
        "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    cpus = args.client_cpus
    before = cpu_seconds(server_pid)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    used = cpu_seconds(server_pid) - before
    found = re.search(r"^BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", done.stdout, re.M)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    requests, size, micros, p50, p99, errors = (int(value) for value in found.groups())
    seconds = micros / 1e6
    return Sample(
        requests / seconds,
        size / seconds / 1e6,
        p50 / 1000,
        p99 / 1000,
        used * 1e6 / max(requests, 1),
        errors,
    )


def _median(samples: list[Sample]) -> Sample:
    return Sample(
        *(
            statistics.median(getattr(sample, field) for sample in samples)
            for field in ("rps", "mbps", "p50_ms", "p99_ms", "cpu_us")
        ),
        errors=sum(sample.errors for sample in samples),
    )


def http_benchmark(args: argparse.Namespace, nginx_binary: str, wrk: str) -> None:
    sizes: list[int] = args.size
    with tempfile.TemporaryDirectory(prefix="vk-bench-origin-") as temp:
        base = Path(temp)
        os.chmod(base, 0o755)  # nginx workers run as nobody
        media = base / "media"
        renditions = write_tree(media, sizes, args.segments)
        workloads = [
            (
                f"segment {size / 1000:g} KB",
                [f"/live/{SLUG}/{name}/s1-seg-{n}.m4s" for n in range(args.segments)],
            )
            for size, name in zip(sizes, renditions, strict=True)
        ]
        workloads.append(
            ("media playlist", [f"/live/{SLUG}/{name}/index.m3u8" for name in renditions])
        )
        samples: dict[tuple[str, str], list[Sample]] = {}
        server_cpus: set[int] = args.server_cpus
        with (
            our_origin(media, base / "data", server_cpus) as (our_port, our_pid, _),
            nginx(nginx_binary, base, media, server_cpus, 1) as (nginx_port, nginx_pid),
        ):
            servers = {"ours": (our_port, our_pid), "nginx": (nginx_port, nginx_pid)}
            warm = argparse.Namespace(**{**vars(args), "duration": 1})
            for port, pid in servers.values():  # first touches, page cache, imports
                for _, paths in workloads:
                    run_wrk(wrk, port, paths, warm, pid, base)
            for round_number in range(args.rounds):
                order = ["ours", "nginx"] if round_number % 2 == 0 else ["nginx", "ours"]
                for label, paths in workloads:
                    for server in order:
                        port, pid = servers[server]
                        sample = run_wrk(wrk, port, paths, args, pid, base)
                        samples.setdefault((label, server), []).append(sample)
        pinned = (
            f"both pinned to CPU {_cpus(server_cpus)}, wrk to CPU {_cpus(args.client_cpus)}"
            if server_cpus
            else "not pinned"
        )
        print(
            f"origin vs nginx {_nginx_version(nginx_binary)}: our origin is one process "
            f"(one event loop), nginx worker_processes 1; {pinned}"
        )
        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s cycling over "
            f"{args.segments} segments per rendition; median of {args.rounds} alternating rounds"
        )
        print()
        print(
            f"{'workload':<18} {'server':<12} {'req/s':>9} {'MB/s':>8} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'CPU µs/req':>11} {'cores busy':>11}"
        )
        for label, _ in workloads:
            ours, theirs = (_median(samples[(label, server)]) for server in ("ours", "nginx"))
            for server, sample in (("ours", ours), ("nginx", theirs)):
                rounds = ", ".join(f"{s.rps:.0f}" for s in samples[(label, server)])
                print(
                    f"{label if server == 'ours' else '':<18} {server:<12} {sample.rps:>9.0f} "
                    f"{sample.mbps:>8.1f} {sample.p50_ms:>8.2f} {sample.p99_ms:>8.2f} "
                    f"{sample.cpu_us:>11.0f} {sample.cpu_us * sample.rps / 1e6:>11.2f}"
                    f"   req/s by round: {rounds}"
                )
            print(
                f"{'':<18} {'ours/nginx':<12} {ours.rps / theirs.rps:>8.2f}x "
                f"{ours.mbps / theirs.mbps:>7.2f}x {ours.p50_ms / theirs.p50_ms:>7.2f}x "
                f"{ours.p99_ms / theirs.p99_ms:>7.2f}x {ours.cpu_us / theirs.cpu_us:>10.2f}x"
            )
            if theirs.cpu_us * theirs.rps / 1e6 < 0.8:
                print(
                    f"{'':<18} (nginx's core is not saturated: the client limits it; "
                    "compare CPU/req)"
                )
            if ours.errors or theirs.errors:
                print(f"{'':<18} errors: ours {ours.errors}, nginx {theirs.errors}")
        if args.profile:
            with our_origin(media, base / "data", server_cpus, profile=True) as (port, pid, stop):
                run_wrk(wrk, port, workloads[0][1], args, pid, base)
                report = stop()
            print(f"\nprofile of our origin under wrk ({workloads[0][0]}, cProfile, by tottime):")
            print("\n".join((report or "").strip().splitlines()[:40]))


def _cpus(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def _nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return done.stderr.strip().rsplit("/", 1)[-1]


# --- S3 upload ---------------------------------------------------------------------------------


def _serve_moto(conn: Any) -> None:
    """Child process: moto's S3 server; sends its port, stops when told to."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    conn.send(server.get_host_and_port()[1])
    conn.recv()
    server.stop()


def _boto3_client(endpoint: str, pool: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=max(pool, 10)),
    )


def upload_boto3(endpoint: str, root: Path, relpaths: list[str], concurrency: int) -> float:
    """Seconds for plain boto3 ``put_object`` of every file (a loop, or a pool that wide)."""
    client = _boto3_client(endpoint, concurrency)

    def put(relpath: str) -> None:
        # Bytes: a file body makes botocore send "Expect: 100-continue" (a wait per put).
        body = (root / relpath).read_bytes()
        client.put_object(Bucket=BUCKET, Key=f"ref/{relpath}", Body=body)

    put(relpaths[0])  # connection and credential set-up outside the timing
    started = time.perf_counter()
    if concurrency == 1:
        for relpath in relpaths:
            put(relpath)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(put, relpaths))
    return time.perf_counter() - started


def upload_ours(endpoint: str, root: Path, relpaths: list[str], concurrency: int) -> float:
    """Seconds for ``S3Storage.publish_segment`` of every file, all submitted at once, on a
    fresh spool (hard links: the backend may release local copies)."""
    from vilokanam.config.settings import S3Settings
    from vilokanam.origin.s3 import S3Storage

    async def run(spool: Path) -> float:
        settings = S3Settings(
            bucket=BUCKET,
            prefix="ours",
            region=AWS_ENV["AWS_DEFAULT_REGION"],
            endpoint_url=endpoint,
            addressing_style="path",
            upload_concurrency=concurrency,
        )
        storage = S3Storage(spool, settings)
        await storage.start()
        try:
            await storage.publish_segment(relpaths[0])  # warm-up, as for boto3
            started = time.perf_counter()
            await asyncio.gather(*(storage.publish_segment(relpath) for relpath in relpaths))
            return time.perf_counter() - started
        finally:
            await storage.close(5.0)

    with tempfile.TemporaryDirectory(prefix="vk-bench-spool-") as temp:
        spool = Path(temp)
        for relpath in relpaths:
            (spool / relpath).parent.mkdir(parents=True, exist_ok=True)
            os.link(root / relpath, spool / relpath)
        return asyncio.run(run(spool))


def s3_benchmark(args: argparse.Namespace) -> None:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        print(f"S3 upload: skipped ({exc.name} missing): pip install 'moto[server]' boto3")
        return
    os.environ.update(AWS_ENV)
    have_ours = (ROOT / "vilokanam/origin/s3.py").exists()
    size = args.size[0]
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_moto, args=(child,))
    process.start()
    with tempfile.TemporaryDirectory(prefix="vk-bench-s3-") as temp:
        try:
            endpoint = f"http://127.0.0.1:{parent.recv()}"
            _boto3_client(endpoint, 1).create_bucket(Bucket=BUCKET)
            root = Path(temp)
            folder = root / PREFIX / rendition_name(size)
            folder.mkdir(parents=True)
            relpaths = []
            payload = os.urandom(size)
            for sequence in range(args.uploads):
                (folder / f"s1-seg-{sequence}.m4s").write_bytes(payload)
                relpaths.append(f"{PREFIX}/{folder.name}/s1-seg-{sequence}.m4s")
            upload_boto3(endpoint, root, relpaths[:10], 4)  # moto's first puts are slow
            seconds: dict[tuple[str, int], list[float]] = {}
            sides = [("ours", upload_ours)] if have_ours else []
            sides.append(("boto3", upload_boto3))
            for round_number in range(args.rounds):
                for concurrency in CONCURRENCIES:
                    turn = sides if round_number % 2 == 0 else sides[::-1]
                    for name, upload in turn:
                        elapsed = upload(endpoint, root, relpaths, concurrency)
                        seconds.setdefault((name, concurrency), []).append(elapsed)
        finally:
            parent.send("stop")
            process.join(10)
            if process.is_alive():
                process.kill()
    print()
    print(
        f"S3 upload to moto {_moto_version()} (local, its own process): {args.uploads} segments "
        f"of {size / 1000:g} KB per run, median of {args.rounds} alternating rounds"
    )
    if not have_ours:
        print("vilokanam/origin/s3.py does not exist yet: plain boto3 only")
    print(
        f"{'concurrency':>11} {'ours seg/s':>11} {'ours MB/s':>10} {'boto3 seg/s':>12} "
        f"{'boto3 MB/s':>11} {'ours/boto3':>11}"
    )
    for concurrency in CONCURRENCIES:
        reference = args.uploads / statistics.median(seconds[("boto3", concurrency)])
        row = f"{concurrency:>11} "
        if have_ours:
            ours = args.uploads / statistics.median(seconds[("ours", concurrency)])
            row += f"{ours:>11.1f} {ours * size / 1e6:>10.1f} "
        else:
            row += f"{'-':>11} {'-':>10} "
        row += f"{reference:>12.1f} {reference * size / 1e6:>11.1f}"
        if have_ours:
            row += f" {ours / reference:>10.2f}x"
        print(row)
    print(
        "(boto3: a default client, put_object of the file's bytes in a loop at 1, "
        "a thread pool of that width at 4 and 8)"
    )


def _moto_version() -> str:
    import moto

    return str(moto.__version__)


# --- main --------------------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/usr/local/sbin") if Path(f"{d}/{name}").exists()),
        None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=0, help="wrk threads (0: client cores)")
    parser.add_argument(
        "--size", type=parse_sizes, default=parse_sizes("750K,200K"), help="segment sizes"
    )
    parser.add_argument("--segments", type=int, default=60, help="segments per rendition")
    parser.add_argument("--uploads", type=int, default=100, help="segments per S3 upload run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and wrk")
    parser.add_argument("--profile", action="store_true", help="cProfile our origin at the end")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-s3", action="store_true")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    args.server_cpus = {cores[-1]} if pin else set()
    args.client_cpus = set(cores[:-1]) if pin else set()
    if args.threads <= 0:
        args.threads = max(1, len(args.client_cpus or cores))
    args.connections = max(args.connections, args.threads)
    if not args.skip_http:
        nginx_binary, wrk = _tool("nginx"), _tool("wrk")
        if nginx_binary is None or wrk is None:
            missing = " and ".join(n for n, p in (("nginx", nginx_binary), ("wrk", wrk)) if not p)
            raise SystemExit(
                f"{missing} not found: apt-get install nginx wrk (or --skip-http for S3 only)"
            )
        http_benchmark(args, nginx_binary, wrk)
    if not args.skip_s3:
        s3_benchmark(args)


if __name__ == "__main__":
    main()
