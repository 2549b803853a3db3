"""The in-memory media cache: bounded, LRU, never stale, and the same responses as from disk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from vilokanam.config import load_settings
from vilokanam.origin.filecache import FileCache, read_file
from vilokanam.origin.http import create_app


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def replace(path: Path, data: bytes) -> None:
    """As the packager and the thumbnailer do: a new file renamed over the old name."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


async def cached(cache: FileCache, path: str) -> bytes | None:
    entry = cache.get(path, os.stat(path)) or await cache.load(path)
    return None if entry is None else entry.body


async def test_bounded_by_bytes_least_recently_served_evicted(tmp_path: Path) -> None:
    cache = FileCache(max_bytes=300, max_entry=200)
    a, b, c = (write(tmp_path / name, name.encode() * 100) for name in "abc")
    assert await cached(cache, a) == b"a" * 100
    assert await cached(cache, b) == b"b" * 100
    assert await cached(cache, a) is not None  # a is now the most recently served
    assert cache.hits == 1 and cache.misses == 2
    assert await cached(cache, c) is not None
    assert (cache.size, len(cache)) == (300, 3)
    d = write(tmp_path / "d", b"d" * 150)
    assert await cached(cache, d) is not None
    assert cache.size == 250 <= cache.max_bytes  # b and then a went, least recent first
    assert cache.get(a, os.stat(a)) is None and cache.get(b, os.stat(b)) is None
    assert cache.get(c, os.stat(c)) is not None and cache.get(d, os.stat(d)) is not None


async def test_files_over_the_entry_limit_are_not_cached(tmp_path: Path) -> None:
    cache = FileCache(max_bytes=1000, max_entry=100)
    big = write(tmp_path / "big", b"x" * 101)
    assert not cache.cacheable(os.stat(big))
    assert read_file(big, 100) is None
    assert await cache.load(big) is None and len(cache) == 0 and cache.size == 0


async def test_a_file_replaced_at_the_same_name_is_never_served_stale(tmp_path: Path) -> None:
    """Thumbnails are renamed over ``thumbnail.jpg`` every 30 s: same name, same size, and
    here even the same mtime; the inode tells them apart."""
    cache = FileCache()
    thumbnail = tmp_path / "thumbnail.jpg"
    path = write(thumbnail, b"old!")
    stamp = os.stat(path).st_mtime_ns
    assert await cached(cache, path) == b"old!"
    replace(thumbnail, b"new!")
    os.utime(path, ns=(stamp, stamp))
    assert cache.get(path, os.stat(path)) is None
    assert await cached(cache, path) == b"new!"
    with open(path, "r+b") as file:  # rewritten in place: the mtime moves
        file.write(b"NEW")
    os.utime(path, ns=(stamp + 1, stamp + 1))
    assert await cached(cache, path) == b"NEW!"
    assert len(cache) == 1 and cache.size == 4


async def test_one_read_for_concurrent_misses(tmp_path: Path) -> None:
    cache = FileCache()
    path = write(tmp_path / "s1-seg-1.m4s", b"x" * 1000)
    bodies = await asyncio.gather(*(cache.load(path) for _ in range(10)))
    assert {entry.body for entry in bodies if entry is not None} == {b"x" * 1000}
    assert cache.misses == 1 and len(cache) == 1


async def test_missing_files_and_precompressed_siblings_are_not_cached(tmp_path: Path) -> None:
    cache = FileCache()
    assert await cache.load(str(tmp_path / "gone.m4s")) is None
    path = write(tmp_path / "seg.m4s", b"plain")
    write(tmp_path / "seg.m4s.gz", b"gzipped")  # FileResponse may send this one instead
    assert await cache.load(path) is None and len(cache) == 0


# -- over HTTP -----------------------------------------------------------------------------------
@pytest.fixture
async def origin(tmp_path: Path):  # type: ignore[no-untyped-def]
    stream = tmp_path / "media" / "streams" / "7"
    write(stream / "source" / "s7-seg-1.m4s", bytes(range(256)) * 800)
    write(stream / "source" / "index.m3u8", b"#EXTM3U\n")
    write(stream / "thumbnail.jpg", b"jpeg-1")
    cache = FileCache(max_bytes=1 << 20)
    app = create_app(
        load_settings(environ={}),
        tmp_path / "media",
        {"demo": "streams/7"}.get,
        public_url=lambda relpath: f"https://cdn.test/{relpath}" if "gone" in relpath else None,
        file_cache=cache,
    )
    async with TestClient(TestServer(app)) as client:
        yield client, cache, stream


def without_date(headers: object) -> dict[str, str]:
    return {key: value for key, value in dict(headers).items() if key != "Date"}  # type: ignore[call-overload]


async def test_memory_sends_what_the_file_response_sends(origin) -> None:  # type: ignore[no-untyped-def]
    client, cache, _ = origin
    url = "/live/demo/source/s7-seg-1.m4s"
    first = await client.get(url)
    memory = await client.get(url)
    disk = await client.get(url, headers={"If-None-Match": '"other"'})  # FileResponse's path
    assert cache.misses == 1 and cache.hits == 1
    for response in (first, memory, disk):
        assert response.status == 200
        assert await response.read() == bytes(range(256)) * 800
    assert without_date(memory.headers) == without_date(disk.headers)
    assert memory.headers["Accept-Ranges"] == "bytes" and memory.headers["ETag"]
    head = await client.head(url)
    assert head.status == 200 and without_date(head.headers) == without_date(disk.headers)
    not_modified = await client.get(url, headers={"If-None-Match": memory.headers["ETag"]})
    assert not_modified.status == 304
    ranged = await client.get(url, headers={"Range": "bytes=10-19"})
    assert ranged.status == 206 and await ranged.read() == bytes(range(10, 20))
    assert ranged.headers["Content-Range"] == "bytes 10-19/204800"


async def test_replaced_or_removed_files_are_not_served_from_memory(origin) -> None:  # type: ignore[no-untyped-def]
    client, cache, stream = origin
    assert await (await client.get("/live/demo/thumbnail.jpg")).read() == b"jpeg-1"
    replace(stream / "thumbnail.jpg", b"jpeg-2")
    assert await (await client.get("/live/demo/thumbnail.jpg")).read() == b"jpeg-2"
    segment = stream / "source" / "s7-seg-1.m4s"
    assert (await client.get("/live/demo/source/s7-seg-1.m4s")).status == 200
    segment.unlink()  # retention, or S3 releasing the local copy
    assert (await client.get("/live/demo/source/s7-seg-1.m4s")).status == 404
    write(stream / "source" / "gone-2.m4s", b"x")
    assert (await client.get("/live/demo/source/gone-2.m4s")).status == 200
    (stream / "source" / "gone-2.m4s").unlink()
    moved = await client.get("/live/demo/source/gone-2.m4s", allow_redirects=False)
    assert moved.status == 302
    assert moved.headers["Location"] == "https://cdn.test/streams/7/source/gone-2.m4s"
    assert len(cache) == 1 and cache.size == len(b"jpeg-2"), "what left the disk left memory"


async def test_playlists_are_read_every_time(origin) -> None:  # type: ignore[no-untyped-def]
    client, cache, stream = origin
    assert await (await client.get("/live/demo/source/index.m3u8")).read() == b"#EXTM3U\n"
    replace(stream / "source" / "index.m3u8", b"#EXTM3U\n#EXT-X-ENDLIST\n")
    assert await (await client.get("/live/demo/source/index.m3u8")).read() == (
        b"#EXTM3U\n#EXT-X-ENDLIST\n"
    )
    assert len(cache) == 0
