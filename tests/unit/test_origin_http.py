"""The origin's HTTP rules: content types, cache headers, CORS, and no path escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from vilokanam.config import load_settings
from vilokanam.origin.http import create_app, safe_relative


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
