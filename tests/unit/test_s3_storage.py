"""S3Storage against moto's S3 API over HTTP, with a proxy to take S3 away."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.s3 import Bucket, PausableProxy
from vilokanam.config.settings import S3Settings
from vilokanam.origin.metrics import ServerMetrics
from vilokanam.origin.s3 import ListingRefused, S3Storage, backoff
from vilokanam.origin.storage import (
    PLAYLIST_CACHE,
    SEGMENT_CACHE,
    THUMBNAIL_CACHE,
    LocalStorage,
    SegmentDropped,
)

MIB = 1024 * 1024
FAST_RETRY = {"retry_initial": 0.05, "retry_max": 0.2, "timeout": 2}

Factory = Callable[..., Any]


@pytest.fixture
async def make_storage(tmp_path: Path, s3_bucket: Bucket) -> AsyncIterator[Factory]:
    """``await make_storage(endpoint=..., **settings)``: a started S3Storage, closed after."""
    made: list[S3Storage] = []

    async def make(endpoint: str | None = None, **overrides: Any) -> S3Storage:
        values = {"bucket": s3_bucket.name, "endpoint_url": endpoint or s3_bucket.endpoint}
        values["addressing_style"] = "path"
        storage = S3Storage(tmp_path / "media", S3Settings(**(values | FAST_RETRY | overrides)))
        await storage.start()
        made.append(storage)
        return storage

    yield make
    for storage in made:
        await storage.close(0)


def write(storage: S3Storage | LocalStorage, relpath: str, data: bytes | int = 1000) -> bytes:
    body = data if isinstance(data, bytes) else bytes(range(256)) * (data // 256 + 1)
    body = body[: len(body) if isinstance(data, bytes) else data]
    path = storage.root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return body


def playlist(*segments: str) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2"]
    for name in segments:
        lines += ["#EXTINF:2.0,", name]
    return "\n".join(lines) + "\n"


def body_of(params: dict[str, Any]) -> bytes:
    """A put's body as botocore holds it at ``before-call`` (bytes become a BytesIO)."""
    body = params["body"]
    return body if isinstance(body, bytes) else body.getvalue()


def hook(storage: S3Storage, event: str, handler: Callable[..., None]) -> None:
    """Run ``handler(**kwargs)`` in the upload thread at a botocore event of the storage."""
    storage.client.meta.events.register(event, handler)


async def test_objects_carry_type_and_cache_headers(make_storage, s3_bucket: Bucket) -> None:
    storage = await make_storage(prefix="/vk/", public_base_url="https://cdn.example/")
    files = {
        "streams/1/720p/s1-seg-0.m4s": ("video/iso.segment", SEGMENT_CACHE),
        "streams/1/720p/s1-init-0.mp4": ("video/mp4", SEGMENT_CACHE),
        "streams/1/ts/s1-seg-0.ts": ("video/mp2t", SEGMENT_CACHE),
        "streams/1/thumbnail.jpg": ("image/jpeg", THUMBNAIL_CACHE),
    }
    bodies = {relpath: write(storage, relpath, 5000) for relpath in files}
    await asyncio.gather(*(storage.publish_segment(relpath) for relpath in files))
    await storage.publish_playlist("streams/1/720p/index.m3u8", playlist("s1-seg-0.m4s"))
    assert (storage.root / "streams/1/720p/index.m3u8").read_text() == playlist("s1-seg-0.m4s")
    assert await storage.flush(10)

    files["streams/1/720p/index.m3u8"] = ("application/vnd.apple.mpegurl", PLAYLIST_CACHE)
    for relpath, (kind, cache) in files.items():
        head = s3_bucket.head(f"vk/{relpath}")
        assert head is not None, relpath
        assert (head["ContentType"], head["CacheControl"]) == (kind, cache), relpath
        if relpath in bodies:
            assert s3_bucket.get(f"vk/{relpath}") == bodies[relpath]
    assert storage.uploads_ok == 4 and storage.spool_bytes == 0 and storage.spool_files == 0
    assert storage.public_url("streams/1/master.m3u8") == (
        "https://cdn.example/vk/streams/1/master.m3u8"
    )


async def test_public_url_is_none_without_a_base(make_storage) -> None:
    storage = await make_storage()
    assert storage.public_url("streams/1/master.m3u8") is None
    assert storage.key("streams/1/x.m4s") == "streams/1/x.m4s"


async def test_missing_segment_file_is_an_error(make_storage) -> None:
    storage = await make_storage()
    with pytest.raises(FileNotFoundError):
        await storage.publish_segment("streams/1/720p/never-written.m4s")


async def test_playlist_versions_coalesce_to_the_newest(make_storage, s3_bucket: Bucket) -> None:
    storage = await make_storage()
    sent: list[str] = []
    first_put = threading.Event()
    release = threading.Event()

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(body_of(params).decode())
        first_put.set()
        release.wait(10)  # the first put stays in flight while more versions arrive

    hook(storage, "before-call.s3.PutObject", record)
    versions = [playlist(*(f"seg-{n}.m4s" for n in range(k))) for k in range(1, 11)]
    await storage.publish_playlist("streams/2/index.m3u8", versions[0])
    assert await asyncio.to_thread(first_put.wait, 5)
    started = time.monotonic()
    for text in versions[1:]:
        await storage.publish_playlist("streams/2/index.m3u8", text)
    assert time.monotonic() - started < 1.0, "publish_playlist does not wait for S3"
    assert (storage.root / "streams/2/index.m3u8").read_text() == versions[-1]
    release.set()
    assert await storage.flush(10)
    assert sent == [versions[0], versions[-1]], "in-flight one, then only the newest"
    assert s3_bucket.get("streams/2/index.m3u8").decode() == versions[-1]


async def test_a_playlist_never_reaches_s3_before_its_segments(
    make_storage, s3_bucket: Bucket
) -> None:
    """The packager's pattern: segments of sequence n+1 upload while playlist n is put."""
    storage = await make_storage(upload_concurrency=4)
    missing: list[str] = []
    checked: list[int] = []

    def check(params: dict[str, Any], **_: Any) -> None:
        url = params["url"]
        if not url.endswith(".m3u8"):
            return
        folder = url.split(f"/{s3_bucket.name}/", 1)[1].rsplit("/", 1)[0]
        names = [line for line in body_of(params).decode().splitlines() if line.endswith(".m4s")]
        checked.append(len(names))
        missing.extend(n for n in names if s3_bucket.head(f"{folder}/{n}") is None)

    hook(storage, "before-call.s3.PutObject", check)
    renditions = ("720p", "360p", "source")
    listed: dict[str, list[str]] = {name: [] for name in renditions}

    async def publish_sequence(n: int) -> None:
        names = {r: f"s3-seg-{n}.m4s" for r in renditions}
        for r in renditions:
            write(storage, f"streams/3/{r}/{names[r]}", 150_000)
        await asyncio.gather(
            *(storage.publish_segment(f"streams/3/{r}/{names[r]}") for r in renditions)
        )
        for r in renditions:
            listed[r].append(names[r])
            await storage.publish_playlist(f"streams/3/{r}/index.m3u8", playlist(*listed[r]))

    previous: asyncio.Task[None] | None = None
    for n in range(12):
        task = asyncio.create_task(publish_sequence(n))
        if previous is not None:
            await previous
        previous = task
    assert previous is not None
    await previous
    assert await storage.flush(10)
    assert checked, "playlist puts were observed"
    assert missing == []
    for r in renditions:
        assert s3_bucket.get(f"streams/3/{r}/index.m3u8").decode() == playlist(*listed[r])


async def test_delete_goes_in_batches_of_1000_keys(make_storage, s3_bucket: Bucket) -> None:
    storage = await make_storage(prefix="p")
    calls: list[int] = []
    hook(
        storage,
        "before-call.s3.DeleteObjects",
        lambda params, **_: calls.append(params["body"].count(b"<Key>")),
    )
    relpaths = [f"streams/4/720p/seg-{n}.m4s" for n in range(2500)]
    kept = "streams/4/720p/kept.m4s"
    for relpath in (relpaths[0], relpaths[1500], relpaths[-1], kept):
        write(storage, relpath, 100)
        await storage.publish_segment(relpath)
    await storage.delete(relpaths)
    assert not (storage.root / relpaths[0]).exists(), "local copy removed at once"
    assert await storage.flush(20)
    assert calls == [1000, 1000, 500]
    assert s3_bucket.keys("p/") == [f"p/{kept}"]
    assert storage.deletes == 2500


async def test_a_delete_s3_refuses_for_good_is_given_up_not_retried_forever(
    make_storage, s3_bucket: Bucket, caplog
) -> None:
    storage = await make_storage()
    relpath = "streams/5/720p/seg-0.m4s"
    write(storage, relpath, 100)
    await storage.publish_segment(relpath)
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=relpath)
    s3_bucket.client.delete_bucket(Bucket=s3_bucket.name)  # NoSuchBucket: a 404
    with caplog.at_level(logging.ERROR, logger="vilokanam.origin.s3"):
        await storage.delete([relpath])
        assert await storage.flush(5), "later deletes and flushes are not blocked"
    assert "refused to delete" in caplog.text


async def test_delete_waits_for_playlist_puts_queued_before_it(
    make_storage, s3_bucket: Bucket, s3_proxy: PausableProxy
) -> None:
    storage = await make_storage(endpoint=s3_proxy.endpoint)
    order: list[str] = []
    hook(storage, "after-call.s3.PutObject", lambda **kw: order.append("put"))
    hook(storage, "before-call.s3.DeleteObjects", lambda **kw: order.append("delete"))
    for n in range(3):
        write(storage, f"streams/5/seg-{n}.m4s", 1000)
        await storage.publish_segment(f"streams/5/seg-{n}.m4s")
    order.clear()
    s3_proxy.pause()
    await storage.publish_playlist("streams/5/index.m3u8", playlist("seg-1.m4s", "seg-2.m4s"))
    await asyncio.wait_for(storage.delete(["streams/5/seg-0.m4s"]), 1.0)  # does not wait for S3
    await asyncio.sleep(0.5)
    assert order == [], "nothing reaches S3 while it is away"
    s3_proxy.resume()
    assert await storage.flush(10)
    assert order == ["put", "delete"]
    assert s3_bucket.keys("streams/5/") == [
        "streams/5/index.m3u8",
        "streams/5/seg-1.m4s",
        "streams/5/seg-2.m4s",
    ]


async def test_an_outage_makes_uploads_wait_then_complete(
    make_storage, s3_bucket: Bucket, s3_proxy: PausableProxy
) -> None:
    storage = await make_storage(endpoint=s3_proxy.endpoint)
    write(storage, "streams/6/seg-0.m4s", 2000)
    await storage.publish_segment("streams/6/seg-0.m4s")  # the client's connection is open
    s3_proxy.pause()
    bodies = {
        f"streams/6/seg-{n}.m4s": write(storage, f"streams/6/seg-{n}.m4s", 200_000)
        for n in range(1, 6)
    }
    uploads = [asyncio.create_task(storage.publish_segment(relpath)) for relpath in bodies]
    await storage.publish_playlist("streams/6/index.m3u8", playlist("seg-0.m4s"))
    await asyncio.sleep(1.5)
    assert not any(task.done() for task in uploads), "publish_segment waits out the outage"
    assert storage.upload_retries > 0
    assert storage.spool_files == 5 and storage.spool_bytes == 5 * 200_000
    assert s3_bucket.keys("streams/6/") == ["streams/6/seg-0.m4s"]
    s3_proxy.resume()
    await asyncio.wait_for(asyncio.gather(*uploads), 10)
    assert await storage.flush(5)
    for relpath, body in bodies.items():
        assert s3_bucket.get(relpath) == body
    assert s3_bucket.get("streams/6/index.m3u8").decode() == playlist("seg-0.m4s")
    assert storage.uploads_ok == 6 and storage.uploads_dropped == 0 and storage.spool_bytes == 0


async def test_a_full_spool_gives_up_the_oldest_segments(
    make_storage, s3_bucket: Bucket, s3_proxy: PausableProxy, caplog
) -> None:
    storage = await make_storage(endpoint=s3_proxy.endpoint, spool_max_mb=16)
    s3_proxy.pause()
    write(storage, "streams/7/init-0.mp4", 6 * MIB)
    init = asyncio.create_task(storage.publish_segment("streams/7/init-0.mp4"))
    segments = [f"streams/7/seg-{n}.m4s" for n in range(4)]
    uploads = []
    for index, relpath in enumerate(segments):
        write(storage, relpath, 4 * MIB)
        uploads.append(asyncio.create_task(storage.publish_segment(relpath)))
        # Each one queued (or dropped) before the next: spooled + dropped counts every file.
        while storage.spool_files + storage.uploads_dropped < index + 2:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    # 6 + 4 * 4 MiB > 16 MiB: the oldest segments go; the init segment (never dropped) stays.
    assert [task.done() for task in uploads] == [True, True, False, False]
    for task in uploads[:2]:
        with pytest.raises(SegmentDropped):
            task.result()
    assert storage.uploads_dropped == 2
    assert storage.spool_bytes == 14 * MIB and storage.spool_files == 3
    assert not (storage.root / segments[0]).exists(), "a dropped segment leaves the disk too"
    assert sum("S3 spool full" in r.message for r in caplog.records if r.levelname == "ERROR") == 2
    s3_proxy.resume()
    await asyncio.wait_for(asyncio.gather(init, *uploads[2:]), 20)
    assert s3_bucket.keys("streams/7/") == sorted(["streams/7/init-0.mp4", *segments[2:]])
    assert storage.uploads_dropped == 2 and storage.spool_bytes == 0


async def test_release_local_keeps_files_until_they_are_uploaded(
    make_storage, s3_bucket: Bucket, s3_proxy: PausableProxy
) -> None:
    storage = await make_storage(endpoint=s3_proxy.endpoint)
    done, waiting, unknown = (f"streams/8/{name}.m4s" for name in ("done", "waiting", "unknown"))
    for relpath in (done, waiting, unknown):
        write(storage, relpath, 1000)
    await storage.publish_segment(done)
    s3_proxy.pause()
    upload = asyncio.create_task(storage.publish_segment(waiting))
    while storage.spool_files == 0:
        await asyncio.sleep(0.01)
    release = asyncio.create_task(storage.release_local([done, waiting, unknown]))
    await asyncio.sleep(0.5)
    assert not release.done(), "release_local waits for the pending upload"
    assert (storage.root / waiting).exists()
    s3_proxy.resume()
    await asyncio.wait_for(asyncio.gather(upload, release), 10)
    assert not (storage.root / done).exists() and not (storage.root / waiting).exists()
    assert (storage.root / unknown).exists(), "a file never uploaded is not released"
    assert s3_bucket.keys("streams/8/") == [done, waiting]


async def test_delete_prefix_removes_a_vod_remotely_and_locally(
    make_storage, s3_bucket: Bucket
) -> None:
    storage = await make_storage(prefix="vk")
    for relpath in ("streams/9/a/1.m4s", "streams/9/a/2.m4s", "streams/9/b/1.m4s"):
        write(storage, relpath, 100)
        await storage.publish_segment(relpath)
    await storage.publish_playlist("streams/9/a/index.m3u8", playlist("1.m4s", "2.m4s"))
    write(storage, "streams/9/local-only.jpg", 100)
    write(storage, "streams/90/keep.m4s", 100)
    await storage.publish_segment("streams/90/keep.m4s")
    assert await storage.delete_prefix("streams/9") == 5
    assert s3_bucket.keys("vk/") == ["vk/streams/90/keep.m4s"]
    assert not (storage.root / "streams/9").exists()
    assert (storage.root / "streams/90/keep.m4s").exists()
    for unsafe in ("", "..", "streams/../..", "/etc"):
        with pytest.raises(ValueError):
            await storage.delete_prefix(unsafe)


async def test_flush_and_close_report_what_s3_did_not_get(
    make_storage, s3_proxy: PausableProxy, caplog
) -> None:
    storage = await make_storage(endpoint=s3_proxy.endpoint)
    assert await storage.flush(0)
    s3_proxy.pause()
    write(storage, "streams/10/seg-0.m4s", 3000)
    upload = asyncio.create_task(storage.publish_segment("streams/10/seg-0.m4s"))
    await storage.publish_playlist("streams/10/index.m3u8", playlist("seg-0.m4s"))
    assert not await storage.flush(0.3)
    caplog.set_level(logging.WARNING, logger="vilokanam.origin.s3")
    await storage.close(0.2)
    with pytest.raises(SegmentDropped):
        await upload
    assert (storage.root / "streams/10/seg-0.m4s").exists(), "left on disk"
    closing = [r.getMessage() for r in caplog.records if "closed with" in r.getMessage()]
    assert closing and "1 segment(s) (3000 bytes) not uploaded" in closing[0]
    assert "1 playlist(s) not written" in closing[0]


async def test_slow_uploads_are_reported(make_storage, caplog) -> None:
    storage = await make_storage()
    storage.expected_segment_seconds = 0.2
    hook(storage, "before-call.s3.PutObject", lambda **kw: time.sleep(0.2))
    write(storage, "streams/11/seg-0.m4s", 1000)
    await storage.publish_segment("streams/11/seg-0.m4s")
    assert storage.upload_seconds_avg >= 0.2
    assert storage.slow_uploads and storage.slow(0.2) and not storage.slow(10.0)
    assert any("players fall behind live" in r.getMessage() for r in caplog.records)


def test_backoff_doubles_up_to_the_maximum_with_jitter() -> None:
    delays = [backoff(n, 0.5, 10.0) for n in range(1, 9)]
    ceilings = [0.5, 1, 2, 4, 8, 10, 10, 10]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_metrics_expose_the_storage_figures(tmp_path: Path) -> None:
    storage = S3Storage(tmp_path, S3Settings(bucket="metrics-bucket"))
    storage.uploads_ok, storage.upload_retries, storage.uploads_dropped = 7, 3, 1
    storage.spool_bytes, storage.deletes, storage.upload_seconds_avg = 4096, 5, 1.95

    class Manager:
        def __init__(self, storage: object) -> None:
            self.storage = storage

        def live_streams(self) -> list[object]:
            return []

    text = ServerMetrics(Manager(storage)).render().decode()  # type: ignore[arg-type]
    for line in (
        "vilokanam_storage_uploads_total 7.0",
        "vilokanam_storage_upload_retries_total 3.0",
        "vilokanam_storage_dropped_total 1.0",
        "vilokanam_storage_deletes_total 5.0",
        "vilokanam_storage_spool_bytes 4096.0",
        "vilokanam_storage_spool_files 0.0",
        "vilokanam_storage_upload_seconds_avg 1.95",
        "vilokanam_storage_upload_slow 1.0",
    ):
        assert line in text, line
    local = ServerMetrics(Manager(object())).render().decode()  # type: ignore[arg-type]
    assert "vilokanam_storage" not in local


def master(*renditions: str) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7"]
    for name in renditions:
        lines += ["#EXT-X-STREAM-INF:BANDWIDTH=900000", f"{name}/index.m3u8"]
    return "\n".join(lines) + "\n"


async def test_a_master_playlist_never_reaches_s3_before_the_playlists_it_names(
    make_storage, s3_bucket: Bucket
) -> None:
    """Media playlist puts are slow; the master, published right after them, waits for them."""
    storage = await make_storage(upload_concurrency=4)
    missing: list[str] = []
    masters: list[int] = []

    def check(params: dict[str, Any], **_: Any) -> None:
        key = params["url"].split(f"/{s3_bucket.name}/", 1)[1]
        if key.endswith("/index.m3u8"):
            time.sleep(0.2)  # a slow S3 for media playlists
        elif key.endswith("/master.m3u8"):
            folder = key.rsplit("/", 1)[0]
            names = [line for line in body_of(params).decode().splitlines() if line[:1] != "#"]
            masters.append(len(names))
            missing.extend(n for n in names if s3_bucket.head(f"{folder}/{n}") is None)

    hook(storage, "before-call.s3.PutObject", check)
    renditions = ["720p", "360p", "source"]
    for n in range(3):  # the packager: media playlists, then the master naming them
        listed = [f"s-seg-{k}.m4s" for k in range(n + 1)]
        for r in renditions[: n + 1]:
            write(storage, f"streams/12/{r}/{listed[-1]}", 1000)
            await storage.publish_segment(f"streams/12/{r}/{listed[-1]}")
            await storage.publish_playlist(f"streams/12/{r}/index.m3u8", playlist(*listed))
        await storage.publish_playlist("streams/12/master.m3u8", master(*renditions[: n + 1]))
    assert await storage.flush(20)
    assert masters and missing == []
    assert s3_bucket.get("streams/12/master.m3u8").decode() == master(*renditions)


async def test_a_master_playlist_waits_out_an_outage_behind_its_own_stream_only(
    make_storage, s3_bucket: Bucket, s3_proxy: PausableProxy
) -> None:
    storage = await make_storage(endpoint=s3_proxy.endpoint, upload_concurrency=2)
    segment = "streams/13/source/seg-0.m4s"
    media = ["streams/13/source/index.m3u8", "streams/13/720p/index.m3u8"]
    attempts: list[str] = []
    missing: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        key = params["url"].split(f"/{s3_bucket.name}/", 1)[1]
        if key in media:
            time.sleep(0.3)
        elif key == "streams/13/master.m3u8":
            missing.extend(k for k in (segment, *media) if s3_bucket.head(k) is None)
        attempts.append(key)

    hook(storage, "before-call.s3.PutObject", record)
    s3_proxy.pause()
    write(storage, segment, 1000)
    upload = asyncio.create_task(storage.publish_segment(segment))
    while storage.spool_files == 0:
        await asyncio.sleep(0.01)
    for relpath in media:
        await storage.publish_playlist(relpath, playlist("seg-0.m4s"))
    await storage.publish_playlist("streams/13/master.m3u8", master("source", "720p"))
    await storage.publish_playlist("streams/14/master.m3u8", master("source"))
    await asyncio.sleep(0.5)
    s3_proxy.resume()
    await asyncio.wait_for(upload, 10)
    assert await storage.flush(10)
    assert attempts.count("streams/13/master.m3u8") == 1, "no attempt while S3 was away"
    assert missing == []
    last = {key: index for index, key in enumerate(attempts)}
    assert last["streams/14/master.m3u8"] < last["streams/13/master.m3u8"], "not held by 13"
    assert s3_bucket.keys("streams/13/") == sorted([segment, *media, "streams/13/master.m3u8"])


def client_error(status: int, code: str, operation: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


async def test_a_listing_s3_refuses_for_good_raises_at_once_naming_the_permission(
    make_storage, s3_bucket: Bucket, caplog
) -> None:
    """A credential that can put but not list: deletes and recoveries fail, not hang."""
    storage = await make_storage()
    write(storage, "streams/20/source/seg-0.m4s", 100)
    await storage.publish_segment("streams/20/source/seg-0.m4s")

    def refuse(**_: Any) -> None:
        raise client_error(403, "AccessDenied", "ListObjectsV2")

    hook(storage, "before-call.s3.ListObjectsV2", refuse)
    with caplog.at_level(logging.ERROR, logger="vilokanam.origin.s3"):
        with pytest.raises(ListingRefused, match="s3:ListBucket"):
            await asyncio.wait_for(storage.delete_prefix("streams/20"), 5)
        with pytest.raises(ListingRefused, match="AccessDenied"):
            await asyncio.wait_for(storage.published("streams/20"), 5)
    assert sum("s3:ListBucket" in r.getMessage() for r in caplog.records) == 1, "logged once"
    assert (storage.root / "streams/20/source/seg-0.m4s").exists(), "kept for the next try"
    assert s3_bucket.keys("streams/20/") == ["streams/20/source/seg-0.m4s"]


async def test_a_listing_that_fails_for_a_while_is_retried(make_storage) -> None:
    storage = await make_storage()
    write(storage, "streams/21/seg-0.m4s", 100)
    await storage.publish_segment("streams/21/seg-0.m4s")
    failures = [client_error(503, "SlowDown", "ListObjectsV2"), client_error(500, "X", "L")]

    def flaky(**_: Any) -> None:
        if failures:
            raise failures.pop()

    hook(storage, "before-call.s3.ListObjectsV2", flaky)
    published = await asyncio.wait_for(storage.published("streams/21"), 10)
    assert published == {"streams/21/seg-0.m4s"} and failures == []


async def test_an_upload_that_is_not_droppable_outlasts_a_full_spool(
    make_storage, s3_bucket: Bucket, s3_proxy: PausableProxy
) -> None:
    storage = await make_storage(endpoint=s3_proxy.endpoint, spool_max_mb=16)
    s3_proxy.pause()
    kept = [f"streams/22/seg-{n}.m4s" for n in range(3)]
    uploads = []
    for relpath in kept:
        write(storage, relpath, 6 * MIB)
        uploads.append(asyncio.create_task(storage.publish_segment(relpath, droppable=False)))
        while storage.spool_files < len(uploads):
            await asyncio.sleep(0.01)
    write(storage, "streams/22/live.m4s", 4 * MIB)
    live = asyncio.create_task(storage.publish_segment("streams/22/live.m4s"))
    while storage.spool_files < 4:
        await asyncio.sleep(0.01)
    assert storage.uploads_dropped == 0 and not any(task.done() for task in uploads)
    assert all((storage.root / relpath).exists() for relpath in kept)
    s3_proxy.resume()
    await asyncio.wait_for(asyncio.gather(*uploads, live), 20)
    assert s3_bucket.keys("streams/22/") == sorted([*kept, "streams/22/live.m4s"])


async def test_a_playlist_put_given_up_no_longer_holds_its_master_or_deletes(
    make_storage, s3_bucket: Bucket, caplog
) -> None:
    """An error that is not retried ends a playlist's put; what waited for it goes on."""
    storage = await make_storage()
    media = "streams/23/source/index.m3u8"

    def broken(params: dict[str, Any], **_: Any) -> None:
        if params["url"].endswith(media):
            raise RuntimeError("a bug in the put")

    hook(storage, "before-call.s3.PutObject", broken)
    for n in range(2):
        write(storage, f"streams/23/source/seg-{n}.m4s", 100)
        await storage.publish_segment(f"streams/23/source/seg-{n}.m4s")
    await storage.publish_playlist(media, playlist("seg-0.m4s", "seg-1.m4s"))
    await storage.publish_playlist("streams/23/master.m3u8", master("source"))
    await storage.delete(["streams/23/source/seg-0.m4s"])
    with caplog.at_level(logging.ERROR, logger="vilokanam.origin.s3"):
        assert await storage.flush(5), "neither the master nor the delete waits forever"
    assert s3_bucket.keys("streams/23/") == [
        "streams/23/master.m3u8", "streams/23/source/seg-1.m4s"
    ]  # fmt: skip
    assert any(f"{media} given up" in r.getMessage() for r in caplog.records)


def _rmtree_that_leaves_the_folder(path: Any, ignore_errors: bool = False, **_: Any) -> None:
    """``shutil.rmtree`` when a file cannot go (EACCES, EBUSY) or vanishes meanwhile."""
    if not ignore_errors:
        raise FileNotFoundError(f"{path}/gone-meanwhile")


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_delete_prefix_raises_when_the_folder_stays(
    kind: str, make_storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller (a VOD delete) keeps its row and tries again, as files (a journal) remain."""
    storage = LocalStorage(tmp_path / "media") if kind == "local" else await make_storage()
    write(storage, "streams/24/recording.jsonl", 100)
    monkeypatch.setattr("shutil.rmtree", _rmtree_that_leaves_the_folder)
    with pytest.raises(OSError, match="could not be removed"):
        await storage.delete_prefix("streams/24")
    monkeypatch.undo()
    assert await storage.delete_prefix("streams/24") == 1
    assert not (storage.root / "streams/24").exists()


async def test_flushing_one_stream_waits_for_its_writes_only(
    make_storage, s3_bucket: Bucket
) -> None:
    """A recorded stream ending waits for its own uploads, not for a busy stream beside it."""
    storage = await make_storage(upload_concurrency=4)
    release = threading.Event()

    def slow_for_stream_2(params: dict[str, Any], **_: Any) -> None:
        if "/streams/2/" in params["url"]:
            release.wait(10)  # S3 stalls on the other stream's keys

    hook(storage, "before-call.s3.PutObject", slow_for_stream_2)
    uploads = []
    for stream in (1, 2):  # as the packager does: uploads run while it goes on
        write(storage, f"streams/{stream}/source/seg-0.m4s", 1000)
        uploads.append(
            asyncio.ensure_future(storage.publish_segment(f"streams/{stream}/source/seg-0.m4s"))
        )
        await storage.publish_playlist(f"streams/{stream}/source/index.m3u8", playlist("seg-0.m4s"))
    started = time.monotonic()
    assert await storage.flush(5, "streams/1")
    assert time.monotonic() - started < 2, "not held by stream 2"
    assert s3_bucket.get("streams/1/source/index.m3u8").decode() == playlist("seg-0.m4s")
    assert not await storage.flush(0.2, "streams/2"), "stream 2 is still stalled"
    assert not await storage.flush(0.2), "nor is everything"
    assert not uploads[1].done()
    release.set()
    assert await storage.flush(10, "streams/2/")
    assert uploads[1].done() and s3_bucket.head("streams/2/source/index.m3u8") is not None


async def test_delete_prefix_that_s3_refuses_raises_and_keeps_the_folder(
    make_storage, s3_bucket: Bucket
) -> None:
    """A VOD delete (or the sweep) must not report success, nor lose its marker, when S3 keeps
    the objects: the row and the local folder stay for the next try."""
    from botocore.exceptions import ClientError

    storage = await make_storage()
    relpath = "streams/7/source/seg-0.m4s"
    write(storage, relpath, 100)
    await storage.publish_segment(relpath)
    denied = {"Error": {"Code": "AccessDenied", "Message": "denied"},
              "ResponseMetadata": {"HTTPStatusCode": 403}}  # fmt: skip

    def refuse(**_: Any) -> None:
        raise ClientError(denied, "DeleteObjects")  # type: ignore[arg-type]

    hook(storage, "before-call.s3.DeleteObjects", refuse)
    with pytest.raises(PermissionError, match="s3:DeleteObject"):
        await storage.delete_prefix("streams/7")
    assert s3_bucket.keys("streams/7/") == [relpath]
    assert (storage.root / relpath).is_file(), "the marker to try again"
    storage.client.meta.events.unregister("before-call.s3.DeleteObjects", refuse)
    assert await storage.delete_prefix("streams/7") == 1
    assert s3_bucket.keys("streams/7/") == [] and not (storage.root / "streams/7").exists()
