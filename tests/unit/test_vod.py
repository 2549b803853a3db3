"""VODs: who records, the catalogue (lookups, deleting, retention), ``/vod/`` on the origin with
redirects and the billing gate, the ``/api/v1/vods`` routes and ``vilokanam vod``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from tests.conftest import make_settings
from tests.unit.test_gate import SECRET, FakeBilling, media_playlist, token
from vilokanam.cli.main import app as cli_app
from vilokanam.config import Settings
from vilokanam.config.urls import urls_for
from vilokanam.ingest.streams import StreamManager
from vilokanam.origin.api import setup_api
from vilokanam.origin.gate import BillingGate, ChannelCache, SegmentDurations, channel_lookup
from vilokanam.origin.http import create_app
from vilokanam.origin.storage import LocalStorage
from vilokanam.origin.sweep import CHANNEL_DELETED
from vilokanam.origin.vod import (
    RetentionTask,
    VodCatalogue,
    VodLocation,
    delete_vod,
    records,
    retention_days,
)
from vilokanam.store import Channel, RecordingNotFound, SessionState, Store

TOKEN = "unit-test-token-0123456789"
MASTER = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=900000\nsource/index.m3u8\n"


# -- who records, for how long -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("server", "override", "expected"),
    [(False, None, False), (True, None, True), (True, False, False), (False, True, True)],
)
def test_records_follows_the_channel_then_the_server(
    tmp_path: Path, server: bool, override: bool | None, expected: bool
) -> None:
    settings = make_settings(tmp_path, recording={"enabled": server})
    assert records(Channel(slug="news", record=override), settings) is expected


@pytest.mark.parametrize(
    ("server", "override", "expected"), [(0, None, 0), (30, None, 30), (30, 0, 0), (0, 7, 7)]
)
def test_retention_days_follows_the_channel_then_the_server(
    tmp_path: Path, server: int, override: int | None, expected: int
) -> None:
    settings = make_settings(tmp_path, recording={"retention_days": server})
    assert retention_days(Channel(slug="news", vod_retention_days=override), settings) == expected


# -- a store with recorded streams on disk --------------------------------------------------------
class World:
    """A SQLite store, a local media tree and VODs in both."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings: Settings = make_settings(tmp_path / "data")
        self.store = Store(self.settings.database_url)
        self.storage = LocalStorage(self.settings.media_dir)
        self.store.create_channel("free", "Free")
        self.store.create_channel("paid", "Paid", price_per_second=5)

    def record(self, slug: str, *, days: int = 0, files: bool = True) -> int:
        channel = self.store.get_channel(slug)
        assert channel.id is not None
        session = self.store.start_session(channel.id)
        assert session.id is not None
        self.store.update_session(session.id, state=SessionState.ENDED)
        sid = session.id
        if files:
            folder = self.storage.root / f"streams/{sid}"
            (folder / "source").mkdir(parents=True)
            (folder / "master.m3u8").write_text(MASTER)
            playlist = media_playlist(0, [2.0, 2.0, 1.5]).replace("s9-", f"s{sid}-")
            playlist = playlist.replace("#EXT-X-TARGETDURATION", "#EXT-X-PLAYLIST-TYPE:VOD\n#X")
            (folder / "source" / "index.m3u8").write_text(playlist + "#EXT-X-ENDLIST\n")
            (folder / "source" / f"s{sid}-init.mp4").write_bytes(b"init")
            for sequence in range(3):
                (folder / "source" / f"s{sid}-seg-{sequence}.m4s").write_bytes(b"x" * 500)
            (folder / "thumbnail.jpg").write_bytes(b"\xff\xd8\xff jpeg")
        self.store.save_recording(
            session_id=sid,
            channel_id=channel.id,
            prefix=f"streams/{sid}",
            storage="local",
            renditions=["source"],
            duration_ms=5500,
            segments=3,
            size_bytes=1500,
            thumbnail=True,
            retention_days=days,
        )
        return sid

    def folder(self, sid: int) -> Path:
        return self.storage.root / f"streams/{sid}"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.store.close()


# -- the catalogue -------------------------------------------------------------------------------
async def test_resolve_is_cached_and_forgets(world: World) -> None:
    sid = world.record("free")
    lookups: list[int] = []
    original = world.store.get_recording

    def counting(session_id: int) -> Any:
        lookups.append(session_id)
        return original(session_id)

    world.store.get_recording = counting  # type: ignore[method-assign]
    now = [0.0]
    catalogue = VodCatalogue(world.store, world.storage, clock=lambda: now[0])
    found = await asyncio.gather(*(catalogue.resolve(sid) for _ in range(5)))
    assert found == [VodLocation(sid, f"streams/{sid}", "free")] * 5
    assert lookups == [sid], "concurrent requests share one lookup"
    assert await catalogue.resolve(999) is None
    assert await catalogue.resolve(999) is None and lookups == [sid, 999]
    now[0] = 3.0  # past the short wait for an unknown id, within the found one
    await catalogue.resolve(sid)
    await catalogue.resolve(999)
    assert lookups == [sid, 999, 999]
    catalogue.forget(sid)
    await catalogue.resolve(sid)
    assert lookups == [sid, 999, 999, sid]


async def test_a_lookup_racing_a_delete_is_not_cached(world: World) -> None:
    """A lookup that started before a delete must not cache the deleted VOD for 30 s."""
    sid = world.record("free")
    catalogue = VodCatalogue(world.store, world.storage)
    started = asyncio.Event()
    release = asyncio.Event()
    real = world.store.get_recording

    def slow_get(session_id: int):  # type: ignore[no-untyped-def]
        found = real(session_id)
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return found

    loop = asyncio.get_running_loop()
    world.store.get_recording = slow_get  # type: ignore[method-assign]
    lookup = asyncio.ensure_future(catalogue.resolve(sid))
    await started.wait()
    world.store.get_recording = real  # type: ignore[method-assign]
    deleting = asyncio.ensure_future(catalogue.delete(sid))
    await asyncio.sleep(0.05)
    release.set()
    assert await lookup is not None, "the old answer goes to the request that asked"
    await deleting
    assert await catalogue.resolve(sid) is None, "but it is not cached"


async def test_delete_removes_media_then_the_row(world: World) -> None:
    sid = world.record("free")
    catalogue = VodCatalogue(world.store, world.storage)
    assert await catalogue.resolve(sid) is not None
    deleted = await catalogue.delete(sid)
    assert deleted.session_id == sid
    assert not world.folder(sid).exists()
    assert world.store.recordings() == []
    assert await catalogue.resolve(sid) is None, "the origin stops serving it at once"
    with pytest.raises(RecordingNotFound):
        await catalogue.delete(sid)


async def test_a_failed_media_delete_keeps_the_row_to_retry(world: World) -> None:
    sid = world.record("free")

    class Broken(LocalStorage):
        async def delete_prefix(self, prefix: str) -> int:
            raise OSError("disk on fire")

    with pytest.raises(OSError):
        await delete_vod(world.store, Broken(world.storage.root), sid)
    assert [r.session_id for r, _, _ in world.store.recordings()] == [sid]
    await delete_vod(world.store, world.storage, sid)
    assert world.store.recordings() == [] and not world.folder(sid).exists()


@pytest.mark.parametrize("odd", ["streams", "another stream's folder"])
async def test_an_odd_prefix_is_never_deleted(world: World, odd: str) -> None:
    other = world.record("free")
    sid = world.record("free")
    channel = world.store.get_channel("free")
    world.store.save_recording(
        session_id=sid,
        channel_id=channel.id or 0,
        prefix="streams" if odd == "streams" else f"streams/{other}",
        storage="local",
        renditions=[],
        duration_ms=0,
        segments=0,
        size_bytes=0,
        thumbnail=False,
        retention_days=0,
    )
    with pytest.raises(ValueError, match="unexpected prefix"):
        await delete_vod(world.store, world.storage, sid)
    assert world.folder(sid).exists() and world.folder(other).exists()


async def test_retention_deletes_only_expired_vods(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    kept = world.record("free", days=0)
    young = world.record("free", days=30)
    old = world.record("paid", days=1)
    catalogue = VodCatalogue(world.store, world.storage)
    assert await catalogue.expire() == []
    with caplog.at_level(logging.INFO, logger="vilokanam.origin.vod"):
        deleted = await catalogue.expire(datetime.now(UTC) + timedelta(days=2))
    assert [r.session_id for r in deleted] == [old]
    assert not world.folder(old).exists()
    assert world.folder(kept).exists() and world.folder(young).exists()
    assert sorted(r.session_id for r, _, _ in world.store.recordings()) == [kept, young]
    assert f"retention: deleted VOD {old}" in caplog.text


async def test_retention_task_runs_at_start_and_stops(world: World) -> None:
    sid = world.record("free", days=1)
    recording, _, _ = world.store.get_recording(sid)
    with world.store.session() as db:  # make it a VOD from long ago
        recording.expires_at = datetime.now(UTC) - timedelta(hours=1)
        db.add(recording)
        db.commit()
    task = RetentionTask(VodCatalogue(world.store, world.storage), every=3600)
    task.start()
    for _ in range(100):
        if not world.store.recordings():
            break
        await asyncio.sleep(0.02)
    await task.stop()
    assert world.store.recordings() == [] and not world.folder(sid).exists()


async def test_delete_channel_vods(world: World) -> None:
    free = [world.record("free"), world.record("free")]
    paid = world.record("paid")
    catalogue = VodCatalogue(world.store, world.storage)
    assert await catalogue.delete_channel(world.store.get_channel("free").id or 0) == 2
    assert not any(world.folder(sid).exists() for sid in free)
    assert [r.session_id for r, _, _ in world.store.recordings()] == [paid]


# -- the origin ------------------------------------------------------------------------------------
class Origin:
    def __init__(self, client: TestClient, billing: FakeBilling, world: World) -> None:
        self.client = client
        self.billing = billing
        self.world = world


def _origin_app(world: World, billing: FakeBilling, public_base: str | None) -> web.Application:
    catalogue = VodCatalogue(world.store, world.storage)
    gate = BillingGate(
        billing,
        ChannelCache(channel_lookup(world.store)),
        SECRET,
        SegmentDurations(None),
        clock=lambda: 1000.0,
    )

    def public_url(relpath: str) -> str | None:
        return f"{public_base}/{relpath}" if public_base else None

    return create_app(
        world.settings,
        world.storage.root,
        lambda slug: "streams/1" if slug == "free" else None,
        gate=gate,
        resolve_vod=catalogue.resolve,
        public_url=public_url if public_base else None,
    )


@pytest.fixture
async def origin(world: World) -> AsyncIterator[Origin]:
    billing = FakeBilling()
    async with TestClient(TestServer(_origin_app(world, billing, None))) as client:
        yield Origin(client, billing, world)


async def test_a_vod_is_served_like_live(origin: Origin) -> None:
    sid = origin.world.record("free")
    client = origin.client
    master = await client.get(f"/vod/{sid}/master.m3u8")
    assert master.status == 200 and await master.text() == MASTER
    assert master.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert master.headers["Cache-Control"] == "no-cache, no-store"
    assert master.headers["Access-Control-Allow-Origin"] == "*"
    playlist = await (await client.get(f"/vod/{sid}/source/index.m3u8")).text()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and "#EXT-X-ENDLIST" in playlist
    segment = await client.get(f"/vod/{sid}/source/s{sid}-seg-2.m4s")
    assert segment.status == 200 and len(await segment.read()) == 500
    assert segment.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    poster = await client.get(f"/vod/{sid}/thumbnail.jpg")
    assert poster.status == 200 and poster.headers["Content-Type"] == "image/jpeg"
    assert origin.billing.fetches == [], "a free channel's VOD is not billed"


@pytest.mark.parametrize(
    "path",
    [
        "/vod/{sid}/../../vilokanam.db",
        "/vod/{sid}/%2e%2e/%2e%2e/vilokanam.db",
        "/vod/{sid}/source/..%2f..%2fmaster.m3u8",
        "/vod/{sid}/source/s{sid}-seg-9.m4s",
        "/vod/{sid}/source/index.txt",
        "/vod/999/master.m3u8",
        "/vod/0/master.m3u8",
        "/vod/-1/master.m3u8",
        "/vod/abc/master.m3u8",
        "/vod/99999999999999999999/master.m3u8",
        "/vod/{sid}/",
    ],
)
async def test_vod_paths_that_are_not_media_are_404(origin: Origin, path: str) -> None:
    sid = origin.world.record("free")
    response = await origin.client.get(path.format(sid=sid))
    assert response.status == 404, path


async def test_a_priced_channels_vod_passes_the_gate(origin: Origin) -> None:
    sid = origin.world.record("paid")
    client = origin.client
    for path in ("master.m3u8", "source/index.m3u8", f"source/s{sid}-seg-0.m4s"):
        response = await client.get(f"/vod/{sid}/{path}")
        assert response.status == 401, path
    assert (await client.get(f"/vod/{sid}/thumbnail.jpg")).status == 200, "posters are public"
    tok = token(slug="paid")
    media = await (await client.get(f"/vod/{sid}/source/index.m3u8?token={tok}")).text()
    uris = [line for line in media.splitlines() if line and not line.startswith("#")]
    assert uris == [f"s{sid}-seg-{n}.m4s?token={tok}" for n in range(3)]
    assert (7, sid) in origin.billing.watching
    for uri in uris:
        assert (await client.get(f"/vod/{sid}/source/{uri}")).status == 200
    await asyncio.sleep(0.05)
    assert origin.billing.fetches == [(7, "paid", sid, n, d) for n, d in [(0, 2), (1, 2), (2, 1.5)]]
    other = await client.get(f"/vod/{sid}/master.m3u8?token={token(slug='free')}")
    assert other.status == 401, "a token for another channel"
    origin.billing.refuse[7] = "balance exhausted"
    assert (await client.get(f"/vod/{sid}/source/{uris[0]}")).status == 402


async def test_files_not_on_disk_redirect_to_the_public_url(world: World) -> None:
    billing = FakeBilling()
    app = _origin_app(world, billing, "https://cdn.example/media")
    free, paid = world.record("free"), world.record("paid")
    async with TestClient(TestServer(app)) as client:
        for sid in (free, paid):  # released locally (S3 keeps them)
            (world.folder(sid) / "source" / f"s{sid}-seg-1.m4s").unlink()
        (world.folder(free) / "source" / "index.m3u8").unlink()
        (world.folder(paid) / "source" / "index.m3u8").unlink()

        async def location(path: str) -> tuple[int, str | None]:
            response = await client.get(path, allow_redirects=False)
            return response.status, response.headers.get("Location")

        base = "https://cdn.example/media/streams"
        assert await location(f"/vod/{free}/source/s{free}-seg-1.m4s") == (
            302,
            f"{base}/{free}/source/s{free}-seg-1.m4s",
        )
        assert await location(f"/vod/{free}/source/index.m3u8") == (
            302,
            f"{base}/{free}/source/index.m3u8",
        )
        assert (await location(f"/vod/{free}/source/s{free}-seg-0.m4s"))[0] == 200, "local first"
        tok = token(slug="paid")
        assert await location(f"/vod/{paid}/source/s{paid}-seg-1.m4s?token={tok}") == (
            302,
            f"{base}/{paid}/source/s{paid}-seg-1.m4s?token={tok}",
        ), "a priced segment keeps its token (billed from the CDN's logs)"
        assert (await location(f"/vod/{paid}/source/s{paid}-seg-1.m4s"))[0] == 401
        assert (await location(f"/vod/{paid}/source/index.m3u8?token={tok}"))[0] == 404, (
            "only this origin can sign a priced playlist"
        )
        status, where = await location("/live/free/source/s1-seg-1.m4s")
        assert (status, where) == (302, f"{base}/1/source/s1-seg-1.m4s"), "live too"


async def test_a_priced_channel_behind_a_cdn_gets_signed_playlists_here_and_media_there(
    world: World,
) -> None:
    """The stored master points at the CDN; a priced viewer's master points back here (only
    this origin signs playlists). A live media playlist (polled) sends segments to the CDN with
    the token, where the CDN's logs bill them; a VOD's (fetched once) keeps them here, so the
    gate checks every segment. Free viewers get the stored text unchanged."""
    billing = FakeBilling()
    cdn = "https://cdn.example/media"
    app = _origin_app(world, billing, cdn)
    free, paid = world.record("free"), world.record("paid")
    for sid in (free, paid):
        absolute = MASTER.replace("source/", f"{cdn}/streams/{sid}/source/")
        (world.folder(sid) / "master.m3u8").write_text(absolute)
    tok = token(slug="paid")
    async with TestClient(TestServer(app)) as client:
        master = await (await client.get(f"/vod/{paid}/master.m3u8?token={tok}")).text()
        assert master.splitlines()[-1] == f"source/index.m3u8?token={tok}"
        assert (7, paid) in billing.asked, "a VOD's preview and balance are the VOD's session"

        async def media_uris() -> list[str]:
            media = await (await client.get(f"/vod/{paid}/source/index.m3u8?token={tok}")).text()
            return [line for line in media.splitlines() if line and not line.startswith("#")]

        assert await media_uris() == [f"s{paid}-seg-{n}.m4s?token={tok}" for n in range(3)]
        playlist = world.folder(paid) / "source" / "index.m3u8"
        playlist.write_text(playlist.read_text().replace("#EXT-X-ENDLIST\n", ""))  # live
        folder = f"{cdn}/streams/{paid}/source"
        assert await media_uris() == [f"{folder}/s{paid}-seg-{n}.m4s?token={tok}" for n in range(3)]
        media = await (await client.get(f"/vod/{paid}/source/index.m3u8?token={tok}")).text()
        assert f'#EXT-X-MAP:URI="{folder}/s{paid}-init.mp4?token={tok}"' in media
        free_master = await (await client.get(f"/vod/{free}/master.m3u8")).text()
        assert free_master.splitlines()[-1] == f"{cdn}/streams/{free}/source/index.m3u8"


async def test_without_a_public_url_a_missing_file_is_404(origin: Origin) -> None:
    sid = origin.world.record("free")
    (origin.world.folder(sid) / "source" / f"s{sid}-seg-1.m4s").unlink()
    response = await origin.client.get(f"/vod/{sid}/source/s{sid}-seg-1.m4s")
    assert response.status == 404


async def test_an_app_without_vods_answers_404(world: World) -> None:
    app = create_app(world.settings, world.storage.root, lambda slug: None)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/vod/1/master.m3u8")).status == 404


# -- the API -------------------------------------------------------------------------------------
@pytest.fixture
async def api(world: World) -> AsyncIterator[TestClient]:
    app = web.Application()
    manager = StreamManager(world.settings, world.store, world.storage)
    catalogue = VodCatalogue(world.store, world.storage)
    setup_api(
        app,
        store=world.store,
        settings=world.settings,
        manager=manager,
        urls_provider=lambda: urls_for(world.settings, 1935, 8080),
        token=TOKEN,
        vods=catalogue,
    )
    async with TestClient(TestServer(app)) as client:
        yield client


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_api_lists_shows_and_deletes_vods(api: TestClient, world: World) -> None:
    first = world.record("free", days=3)
    second = world.record("paid")
    listed = await (await api.get("/api/v1/vods", headers=AUTH)).json()
    assert [vod["id"] for vod in listed] == [second, first]
    vod = listed[1]
    assert vod["channel"] == "free" and vod["title"] == "Free"
    assert (vod["duration"], vod["segments"], vod["size_bytes"]) == (5.5, 3, 1500)
    assert vod["renditions"] == ["source"] and vod["storage"] == "local"
    assert vod["url"] == f"http://127.0.0.1:8080/vod/{first}/master.m3u8"
    assert vod["thumbnail_url"] == f"http://127.0.0.1:8080/vod/{first}/thumbnail.jpg"
    assert vod["expires_at"] is not None and listed[0]["expires_at"] is None
    assert vod["started_at"] and vod["ended_at"] and vod["created_at"]
    only = await (await api.get("/api/v1/vods?channel=paid", headers=AUTH)).json()
    assert [v["id"] for v in only] == [second]
    assert (await api.get("/api/v1/vods?channel=nope", headers=AUTH)).status == 404
    page = await (await api.get("/api/v1/vods?limit=1", headers=AUTH)).json()
    assert [v["id"] for v in page] == [second]
    rest = await (await api.get(f"/api/v1/vods?limit=1&before={second}", headers=AUTH)).json()
    assert [v["id"] for v in rest] == [first]
    assert (await api.get("/api/v1/vods?limit=501", headers=AUTH)).status == 422
    shown = await (await api.get(f"/api/v1/vods/{first}", headers=AUTH)).json()
    assert shown == vod
    deleted = await api.delete(f"/api/v1/vods/{first}", headers=AUTH)
    assert deleted.status == 204 and await deleted.read() == b""
    assert not world.folder(first).exists()
    missing = await api.get(f"/api/v1/vods/{first}", headers=AUTH)
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"
    assert (await api.delete(f"/api/v1/vods/{first}", headers=AUTH)).status == 404
    assert (await api.get("/api/v1/vods/abc", headers=AUTH)).status == 422
    assert (await api.get("/api/v1/vods")).status == 401


async def test_a_delete_the_storage_refuses_is_503_and_loses_nothing(
    api: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = world.record("free")

    async def refused(prefix: str) -> int:
        raise PermissionError(f"{prefix}: S3 refused to list (s3:ListBucket)")

    monkeypatch.setattr(world.storage, "delete_prefix", refused)
    response = await api.delete(f"/api/v1/vods/{sid}", headers=AUTH)
    body = await response.json()
    assert response.status == 503 and body["error"] == "storage_error", body
    assert "s3:ListBucket" in body["detail"] and "try again" in body["detail"]
    assert [r.session_id for r, _, _ in world.store.recordings()] == [sid]
    channel = await api.delete("/api/v1/channels/free", headers=AUTH)
    assert channel.status == 503 and world.store.get_channel("free").slug == "free"
    monkeypatch.undo()
    assert (await api.delete(f"/api/v1/vods/{sid}", headers=AUTH)).status == 204


async def test_api_channel_recording_fields(api: TestClient, world: World) -> None:
    body = {"slug": "rec", "record": True, "vod_retention_days": 14}
    created = await (await api.post("/api/v1/channels", json=body, headers=AUTH)).json()
    assert (created["record"], created["vod_retention_days"]) == (True, 14)
    patch = {"record": None, "vod_retention_days": 0}
    updated = await (await api.patch("/api/v1/channels/rec", json=patch, headers=AUTH)).json()
    assert (updated["record"], updated["vod_retention_days"]) == (None, 0)
    shown = await (await api.get("/api/v1/channels/free", headers=AUTH)).json()
    assert (shown["record"], shown["vod_retention_days"]) == (None, None)
    for bad in ({"record": "yes"}, {"record": 1}, {"vod_retention_days": -1},
                {"vod_retention_days": 1.5}, {"vod_retention_days": "3"}):  # fmt: skip
        response = await api.patch("/api/v1/channels/rec", json=bad, headers=AUTH)
        assert response.status == 422, bad
        assert [e["field"] for e in (await response.json())["detail"]] == list(bad), bad


def unrecorded_stream(world: World, slug: str) -> int:
    """An ended stream that was not recorded, its last window still on disk."""
    channel = world.store.get_channel(slug)
    assert channel.id is not None
    session = world.store.start_session(channel.id)
    assert session.id is not None
    world.store.update_session(session.id, state=SessionState.ENDED)
    (world.folder(session.id) / "source").mkdir(parents=True)
    (world.folder(session.id) / "source" / "index.m3u8").write_text("#EXTM3U\n#EXT-X-ENDLIST\n")
    return session.id


async def test_api_deleting_a_channel_deletes_its_vods_media(api: TestClient, world: World) -> None:
    sid = world.record("free")
    unrecorded = unrecorded_stream(world, "free")
    other = unrecorded_stream(world, "paid")
    response = await api.delete("/api/v1/channels/free", headers=AUTH)
    assert response.status == 200
    assert not world.folder(sid).exists() and world.store.recordings() == []
    assert (world.folder(unrecorded) / CHANNEL_DELETED).is_file(), "swept later: ENDLIST now"
    assert not (world.folder(other) / CHANNEL_DELETED).exists()


def test_cli_deleting_a_channel_offline_deletes_its_media(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VILOKANAM_DATA_DIR", str(world.settings.data_dir))
    monkeypatch.setenv("VILOKANAM_HTTP_PORT", str(world.settings.http.port))  # nothing there
    sid = world.record("free")
    unrecorded = unrecorded_stream(world, "free")
    other = unrecorded_stream(world, "paid")
    deleted = CliRunner().invoke(cli_app, ["channel", "delete", "free", "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert not world.folder(sid).exists() and world.store.recordings() == []
    assert (world.folder(unrecorded) / CHANNEL_DELETED).is_file()
    assert not (world.folder(other) / CHANNEL_DELETED).exists()


# -- the CLI (local database, no server running) ---------------------------------------------------
def test_cli_vod_commands_offline(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VILOKANAM_DATA_DIR", str(world.settings.data_dir))
    monkeypatch.setenv("VILOKANAM_PUBLIC_HOST", "stream.example")
    monkeypatch.setenv("VILOKANAM_HTTP_PORT", str(world.settings.http.port))  # nothing there
    runner = CliRunner()
    sid = world.record("free")
    listed = runner.invoke(cli_app, ["vod", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [vod] = json.loads(listed.output)
    assert vod["id"] == sid and vod["url"].endswith(f"/vod/{sid}/master.m3u8")
    table = runner.invoke(cli_app, ["vod", "list", "--channel", "free"])
    assert table.exit_code == 0 and "free" in table.output
    older = runner.invoke(cli_app, ["vod", "list", "--json", "--limit", "1", "--before", str(sid)])
    assert older.exit_code == 0 and json.loads(older.output) == [], older.output
    bad = runner.invoke(cli_app, ["vod", "list", "--limit", "0"])
    assert bad.exit_code == 2 and "--limit" in bad.output
    bad = runner.invoke(cli_app, ["vod", "list", "--before", "0"])
    assert bad.exit_code == 2 and "--before" in bad.output
    shown = runner.invoke(cli_app, ["vod", "show", str(sid)])
    assert shown.exit_code == 0 and "thumbnail" in shown.output
    refused = runner.invoke(cli_app, ["vod", "delete", str(sid)], input="n\n")
    assert refused.exit_code != 0 and world.folder(sid).exists()
    deleted = runner.invoke(cli_app, ["vod", "delete", str(sid), "--yes", "--json"])
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.output)["id"] == sid
    assert not world.folder(sid).exists() and world.store.recordings() == []
    missing = runner.invoke(cli_app, ["vod", "show", str(sid)])
    assert missing.exit_code == 1 and f"no VOD {sid}" in missing.output


def test_cli_channel_recording_options(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VILOKANAM_DATA_DIR", str(world.settings.data_dir))
    runner = CliRunner()

    def update(*args: str) -> Any:
        result = runner.invoke(cli_app, ["channel", "update", "free", *args, "--json"])
        assert result.exit_code == 0, result.output
        channel = json.loads(result.output)
        return channel["record"], channel["vod_retention_days"]

    assert update("--no-record") == (False, None)
    assert update("--record", "--vod-retention-days", "7") == (True, 7)
    assert update("--record-default") == (None, 7)
    assert update("--vod-retention-default") == (None, None)
    both = runner.invoke(cli_app, ["channel", "update", "free", "--record", "--record-default"])
    assert both.exit_code == 2
    bad = runner.invoke(cli_app, ["channel", "update", "free", "--vod-retention-days", "-2"])
    assert bad.exit_code == 2 and "vod_retention_days" in bad.output
    created = runner.invoke(cli_app, ["channel", "create", "rec", "--record", "--json"])
    assert json.loads(created.output)["record"] is True
