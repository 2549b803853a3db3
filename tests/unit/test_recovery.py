"""After a crash: playlists a stream left open get ENDLIST, and what S3 never got is sent."""

from __future__ import annotations

import time
from pathlib import Path

import m3u8
import pytest

from tests.conftest import ServerThread, make_settings
from tests.s3 import Bucket
from vilokanam.config.settings import S3Settings
from vilokanam.origin.s3 import S3Storage
from vilokanam.origin.storage import LocalStorage
from vilokanam.packager.recovery import ENDLIST, end_open_playlists
from vilokanam.store import Store

OPEN = (
    "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:4\n"
    '#EXT-X-MAP:URI="s3-init-0.mp4"\n#EXTINF:2.000,\ns3-seg-4.m4s\n#EXTINF:2.000,\ns3-seg-5.m4s\n'
)


def crashed_stream(root: Path, prefix: str = "streams/3") -> None:
    """What a killed server leaves: segments, an init segment, playlists without ENDLIST."""
    for rendition in ("source", "240p"):
        folder = root / prefix / rendition
        folder.mkdir(parents=True)
        (folder / "index.m3u8").write_text(OPEN)
        for name in ("s3-init-0.mp4", "s3-seg-4.m4s", "s3-seg-5.m4s"):
            (folder / name).write_bytes(name.encode() * 10)
    (root / prefix / "master.m3u8").write_text("#EXTM3U\n")


async def test_open_playlists_are_ended_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    crashed_stream(tmp_path)
    ended_before = tmp_path / "streams/3/720p/index.m3u8"
    ended_before.parent.mkdir()
    ended_before.write_text(OPEN + ENDLIST + "\n")
    assert await end_open_playlists(storage, "streams/3") == 2
    for rendition in ("source", "240p"):
        playlist = m3u8.loads((tmp_path / f"streams/3/{rendition}/index.m3u8").read_text())
        assert playlist.is_endlist and [s.uri for s in playlist.segments] == [
            "s3-seg-4.m4s", "s3-seg-5.m4s"
        ]  # fmt: skip
    assert ended_before.read_text().count(ENDLIST) == 1
    assert await end_open_playlists(storage, "streams/3") == 0, "idempotent"


async def test_with_s3_what_the_crash_left_unsent_is_uploaded_first(
    tmp_path: Path, s3_bucket: Bucket
) -> None:
    settings = S3Settings(
        bucket=s3_bucket.name, endpoint_url=s3_bucket.endpoint, addressing_style="path"
    )
    storage = S3Storage(tmp_path / "media", settings)
    await storage.start()
    try:
        crashed_stream(storage.root)
        assert await end_open_playlists(storage, "streams/3") == 2
        assert await storage.flush(20)
    finally:
        await storage.close(5)
    for rendition in ("source", "240p"):
        keys = s3_bucket.keys(f"streams/3/{rendition}/")
        assert keys == sorted(
            f"streams/3/{rendition}/{name}"
            for name in ("index.m3u8", "s3-init-0.mp4", "s3-seg-4.m4s", "s3-seg-5.m4s")
        )
        assert ENDLIST in s3_bucket.get(f"streams/3/{rendition}/index.m3u8").decode()


@pytest.mark.e2e
def test_a_server_started_after_a_crash_ends_the_streams_it_left_open(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    store = Store(settings.database_url)
    channel, _ = store.create_channel("news", "News")
    assert channel.id is not None
    session = store.start_session(channel.id, "127.0.0.1:5000")
    store.close()
    prefix = f"streams/{session.id}"
    crashed_stream(settings.media_dir, prefix)
    server = ServerThread(settings).start()
    try:
        playlist = settings.media_dir / prefix / "source/index.m3u8"
        deadline = time.monotonic() + 10
        while ENDLIST not in playlist.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ENDLIST in playlist.read_text()
        assert server.server.store.sessions()[0].end_reason == "server stopped unexpectedly"
    finally:
        server.stop()
