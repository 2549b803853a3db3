"""The origin's HTTP rules: content types, cache headers, CORS, no path escapes, and billing of
segments sent from memory."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from vilokanam.billing.tokens import issue
from vilokanam.config import load_settings
from vilokanam.origin.filecache import FileCache, _drained
from vilokanam.origin.gate import BillingGate, ChannelCache, SegmentDurations
from vilokanam.origin.http import create_app, safe_relative
from vilokanam.store import Channel


@pytest.fixture
async def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    media = tmp_path / "media"
    stream = media / "streams" / "7"
    (stream / "source").mkdir(parents=True)
    (stream / "master.m3u8").write_text("#EXTM3U\n")
    (stream / "source" / "index.m3u8").write_text("#EXTM3U\n")
    (stream / "source" / "seg-1.m4s").write_bytes(b"\x00" * 100)
    (stream / "source" / "init-0.mp4").write_bytes(b"\x00" * 10)
    (stream / "source" / ".seg-2.m4s.tmp").write_bytes(b"partial")
    (tmp_path / "secret.m3u8").write_text("secret")
    app = create_app(load_settings(environ={}), media, {"demo": "streams/7"}.get)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_playlists_and_segments_have_types_and_cache_rules(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/live/demo/master.m3u8")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert response.headers["Cache-Control"] == "no-cache, no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    segment = await client.get("/live/demo/source/seg-1.m4s")
    assert segment.status == 200 and len(await segment.read()) == 100
    assert segment.headers["Content-Type"] == "video/iso.segment"
    assert segment.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    init = await client.get("/live/demo/source/init-0.mp4")
    assert init.headers["Content-Type"] == "video/mp4"


async def test_cors_preflight(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.options("/live/demo/master.m3u8")
    assert response.status == 204
    assert "GET" in response.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize(
    "path",
    [
        "/live/demo/../../secret.m3u8",
        "/live/demo/%2e%2e/%2e%2e/secret.m3u8",
        "/live/demo/source/..%2f..%2f..%2fsecret.m3u8",
        "/live/demo/source/.seg-2.m4s.tmp",
        "/live/demo/source/seg-9.m4s",
        "/live/other/master.m3u8",
        "/live/demo/source/index.txt",
        "/live/Demo/master.m3u8",
    ],
)
async def test_anything_outside_the_media_tree_is_404(client, path: str) -> None:  # type: ignore[no-untyped-def]
    response = await client.get(path)
    assert response.status == 404
    assert "secret" not in await response.text()


async def test_healthz(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/healthz")
    assert response.status == 200 and (await response.json())["status"] == "ok"


def test_safe_relative() -> None:
    assert safe_relative("source/seg-1.m4s") == "source/seg-1.m4s"
    for bad in ["../x", "a/../b", "/etc/passwd", "a//b", ".hidden", "a/b/c/d", "", "seg.m4s\n"]:
        assert safe_relative(bad) is None, bad


async def test_watch_page_points_at_the_channel(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/watch/demo")
    assert response.status == 200 and response.content_type == "text/html"
    assert '"/live/demo/master.m3u8"' in await response.text()
    assert (await client.get("/watch/..%2fx")).status == 404
    assert (await client.get("/static/watch.html")).status == 404


# -- segments from memory, billed once sent whole ------------------------------------------------
SECRET = b"http-secret-0123456789abcdef0123"
BIG = 16 * 1024 * 1024  # far more than the socket buffers hold: the send takes a while


class Billing:
    """The gate's view of the billing service: every viewer may watch; fetches are recorded."""

    def __init__(self) -> None:
        self.fetches: list[tuple[int, int]] = []

    def note_fetch(
        self, viewer_id: int, channel: Channel, session_id: int, sequence: int, duration: float
    ) -> None:
        self.fetches.append((viewer_id, sequence))

    def note_watching(self, viewer_id: int, channel: Channel, session_id: int) -> None:
        pass

    def allowance(
        self, viewer_id: int, channel: Channel, session_id: int | None = None
    ) -> str | None:
        return None

    async def ensure_loaded(self, viewer_id: int) -> None:
        pass


class Paid(SimpleNamespace):
    client: TestClient
    billing: Billing
    cache: FileCache
    token: str


@pytest.fixture
async def paid(tmp_path: Path):  # type: ignore[no-untyped-def]
    folder = tmp_path / "media" / "streams" / "9" / "source"
    folder.mkdir(parents=True)
    (folder / "index.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n"
        "#EXTINF:2.000,\ns9-seg-1.m4s\n#EXTINF:2.000,\ns9-seg-2.m4s\n"
    )
    (folder / "s9-init.mp4").write_bytes(b"init")
    (folder / "s9-seg-1.m4s").write_bytes(b"x" * 1000)
    (folder / "s9-seg-2.m4s").write_bytes(os.urandom(BIG))
    channel = Channel(id=1, slug="paid", title="Paid", price_per_second=5)
    billing = Billing()
    gate = BillingGate(
        billing, ChannelCache(lambda slug: channel), SECRET, SegmentDurations(None),
        clock=lambda: 1000.0,
    )  # fmt: skip
    cache = FileCache(max_bytes=64 * 1024 * 1024, max_entry=32 * 1024 * 1024)
    app = create_app(
        load_settings(environ={}), tmp_path / "media", lambda slug: "streams/9",
        gate=gate, file_cache=cache,
    )  # fmt: skip
    async with TestClient(TestServer(app)) as client:
        yield Paid(
            client=client, billing=billing, cache=cache, token=issue(SECRET, 7, "paid", 2000)
        )


async def fetches(paid: Paid) -> list[tuple[int, int]]:
    await asyncio.sleep(0.1)
    return paid.billing.fetches


async def raw_get(
    paid: Paid, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, socket.socket]:
    """A GET on a socket with a small receive buffer (the server cannot send far ahead)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    server = paid.client.server
    await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path}?token={paid.token} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {BIG}".encode() in head
    return reader, writer, sock


async def test_segments_from_memory_are_billed_per_get(paid: Paid) -> None:
    client, url = paid.client, f"/live/paid/source/s9-seg-1.m4s?token={paid.token}"
    for _ in range(2):
        response = await client.get(url)
        assert response.status == 200 and await response.read() == b"x" * 1000
    assert (await client.head(url)).status == 200
    init = await client.get(f"/live/paid/source/s9-init.mp4?token={paid.token}")
    assert init.status == 200 and await init.read() == b"init"
    assert paid.cache.hits == 2, "the second GET and the HEAD came from memory"
    assert await fetches(paid) == [(7, 1), (7, 1)], "a HEAD or an init segment bills nothing"


async def test_billed_only_once_the_whole_body_left(paid: Paid) -> None:
    warm = await paid.client.get(f"/live/paid/source/s9-seg-2.m4s?token={paid.token}")
    assert len(await warm.read()) == BIG and await fetches(paid) == [(7, 2)]
    reader, writer, _ = await raw_get(paid, "/live/paid/source/s9-seg-2.m4s")
    try:
        await reader.readexactly(1024 * 1024)
        assert await fetches(paid) == [(7, 2)], "most of the body is still on its way"
        await reader.readexactly(BIG - 1024 * 1024)
        assert await fetches(paid) == [(7, 2), (7, 2)]
    finally:
        writer.close()
    assert paid.cache.hits == 1


async def test_a_client_that_breaks_off_is_not_billed(paid: Paid) -> None:
    url = f"/live/paid/source/s9-seg-2.m4s?token={paid.token}"
    assert len(await (await paid.client.get(url)).read()) == BIG
    reader, writer, sock = await raw_get(paid, "/live/paid/source/s9-seg-2.m4s")
    await reader.readexactly(100_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # a reset, mid-body
    await asyncio.sleep(0.3)
    assert paid.cache.hits == 1 and await fetches(paid) == [(7, 2)]
    assert (await paid.client.get(url)).status == 200, "the server carries on"


async def test_a_connection_lost_while_flushing_is_not_billed() -> None:
    """The last bytes a GET wrote may still wait in the transport: billing waits for them."""

    class Transport:
        def __init__(self) -> None:
            self.buffered, self.limits = 100, (16384, 65536)

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return self.buffered

        def get_write_buffer_limits(self) -> tuple[int, int]:
            return self.limits

        def set_write_buffer_limits(self, high: int, low: int | None = None) -> None:
            self.limits = (high // 4 if low is None else low, high)

    class Writer:
        def __init__(self, lost: bool) -> None:
            self.lost = lost

        async def drain(self) -> None:
            assert transport.limits == (0, 0), "writing pauses until the buffer is empty"
            if self.lost:
                raise ConnectionResetError("Connection lost")
            transport.buffered = 0

    for lost in (True, False):
        transport = Transport()
        request: Any = SimpleNamespace(transport=transport)
        assert await _drained(request, cast(Any, Writer(lost))) is not lost
        assert transport.limits == (16384, 65536)
