"""The billing gate on the origin, with a fake billing service and real files over aiohttp."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import make_settings
from vilokanam.billing.tokens import issue
from vilokanam.origin.gate import (
    BillingGate,
    ChannelCache,
    SegmentDurations,
    parse_extinf,
    sign_playlist,
)
from vilokanam.origin.http import create_app
from vilokanam.origin.viewers import ViewerCounter
from vilokanam.store import Channel

SECRET = b"gate-secret-0123456789abcdef0123"
MASTER = (
    "#EXTM3U\n#EXT-X-VERSION:7\n"
    '#EXT-X-STREAM-INF:BANDWIDTH=900000,CODECS="avc1.64001e,mp4a.40.2"\nsource/index.m3u8\n'
    '#EXT-X-STREAM-INF:BANDWIDTH=300000,CODECS="avc1.64000d,mp4a.40.2"\n180p/index.m3u8\n'
)


def media_playlist(first: int, durations: list[float]) -> str:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    lines.append('#EXT-X-MAP:URI="s9-init.mp4"')
    for offset, duration in enumerate(durations):
        lines += [f"#EXTINF:{duration:.3f},", f"s9-seg-{first + offset}.m4s"]
    return "\n".join(lines) + "\n"


class FakeBilling:
    def __init__(self) -> None:
        self.fetches: list[tuple[int, str, int, int, float]] = []
        self.refuse: dict[int, str] = {}
        self.loaded: list[int] = []
        self.watching: list[tuple[int, int]] = []
        self.asked: list[tuple[int, int | None]] = []  # (viewer, session) of each allowance

    def note_fetch(
        self, viewer_id: int, channel: Channel, session_id: int, sequence: int, duration: float
    ) -> None:
        self.fetches.append((viewer_id, channel.slug, session_id, sequence, duration))

    def note_watching(self, viewer_id: int, channel: Channel, session_id: int) -> None:
        self.watching.append((viewer_id, session_id))

    def allowance(
        self, viewer_id: int, channel: Channel, session_id: int | None = None
    ) -> str | None:
        self.asked.append((viewer_id, session_id))
        return self.refuse.get(viewer_id)

    async def ensure_loaded(self, viewer_id: int) -> None:
        self.loaded.append(viewer_id)


CHANNELS = {
    "paid": Channel(id=1, slug="paid", title="Paid", price_per_second=5),
    "free": Channel(id=2, slug="free", title="Free", price_per_second=0),
}


@pytest.fixture
def media(tmp_path: Path) -> Path:
    for slug in CHANNELS:
        root = tmp_path / "media" / slug
        for rendition in ("source", "180p"):
            folder = root / rendition
            folder.mkdir(parents=True)
            (folder / "index.m3u8").write_text(media_playlist(3, [2.0, 2.0, 1.52]))
            (folder / "s9-init.mp4").write_bytes(b"init")
            for sequence in (3, 4, 5):
                (folder / f"s9-seg-{sequence}.m4s").write_bytes(b"x" * 1000)
        (root / "master.m3u8").write_text(MASTER)
        (root / "poster.jpg").write_bytes(b"jpg")
    return tmp_path / "media"


class Fixture(SimpleNamespace):
    client: TestClient
    billing: FakeBilling
    lookups: list[str]
    viewers: ViewerCounter


@pytest.fixture
async def origin(tmp_path: Path, media: Path):  # type: ignore[no-untyped-def]
    billing = FakeBilling()
    lookups: list[str] = []

    def lookup(slug: str) -> Channel | None:
        lookups.append(slug)
        return CHANNELS.get(slug)

    gate = BillingGate(
        billing,
        ChannelCache(lookup),
        SECRET,
        SegmentDurations(None),
        clock=lambda: 1000.0,
        media_prefix=lambda slug: "streams/9" if slug == "paid" else None,
    )
    viewers = ViewerCounter(30)
    app = create_app(make_settings(tmp_path), media, lambda slug: slug, viewers=viewers, gate=gate)
    async with TestClient(TestServer(app)) as client:
        yield Fixture(client=client, billing=billing, lookups=lookups, viewers=viewers, gate=gate)


async def billed(origin: Fixture) -> list[tuple[int, str, int, int, float]]:
    """The fetch events so far: a segment is billed just after its last byte went out."""
    await asyncio.sleep(0.05)
    return origin.billing.fetches


def token(viewer: int = 7, slug: str = "paid", expires: int = 2000) -> str:
    return issue(SECRET, viewer, slug, expires)


async def test_free_channel_needs_no_token(origin: Fixture) -> None:
    response = await origin.client.get("/live/free/source/s9-seg-3.m4s")
    assert response.status == 200
    master = await (await origin.client.get("/live/free/master.m3u8")).text()
    assert master == MASTER
    assert origin.billing.fetches == []


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "missing token"),
        ("?token=", "missing token"),
        ("?token=garbage", "malformed token"),
        (f"?token={issue(b'other-secret-0123456789abcdef01', 7, 'paid', 2000)}", "bad signature"),
        (f"?token={token(expires=1000)}", "token expired"),
        (f"?token={token(slug='free')}", "token is for another channel"),
    ],
)
async def test_priced_channel_refuses_bad_tokens_with_401(
    origin: Fixture, query: str, reason: str
) -> None:
    for path in ("master.m3u8", "source/index.m3u8", "source/s9-init.mp4", "source/s9-seg-3.m4s"):
        response = await origin.client.get(f"/live/paid/{path}{query}")
        assert response.status == 401, path
        assert await response.json() == {"error": "unauthorized", "detail": reason}
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert origin.billing.fetches == []


async def test_no_balance_is_a_402_and_nothing_is_charged(origin: Fixture) -> None:
    origin.billing.refuse[7] = "balance exhausted"
    response = await origin.client.get(f"/live/paid/source/s9-seg-3.m4s?token={token()}")
    assert response.status == 402
    assert await response.json() == {"error": "payment_required", "detail": "balance exhausted"}
    assert origin.billing.fetches == [] and origin.billing.loaded == [7]


async def test_playlists_carry_the_token_in_every_uri(origin: Fixture) -> None:
    tok = token()
    master = await (await origin.client.get(f"/live/paid/master.m3u8?token={tok}")).text()
    uris = [line for line in master.splitlines() if line and not line.startswith("#")]
    assert uris == [f"source/index.m3u8?token={tok}", f"180p/index.m3u8?token={tok}"]
    media = await (await origin.client.get(f"/live/paid/180p/index.m3u8?token={tok}")).text()
    assert f'#EXT-X-MAP:URI="s9-init.mp4?token={tok}"' in media
    segments = [line for line in media.splitlines() if line and not line.startswith("#")]
    assert segments == [f"s9-seg-{n}.m4s?token={tok}" for n in (3, 4, 5)]
    for uri in segments:  # every nested URI works as it is
        assert (await origin.client.get(f"/live/paid/180p/{uri}")).status == 200
    assert await billed(origin) == [(7, "paid", 9, n, d) for n, d in [(3, 2), (4, 2), (5, 1.52)]]


async def test_only_media_segments_served_to_a_get_are_billed(origin: Fixture) -> None:
    tok = token()
    client = origin.client
    assert (await client.get(f"/live/paid/source/s9-init.mp4?token={tok}")).status == 200
    assert (await client.head(f"/live/paid/source/s9-seg-4.m4s?token={tok}")).status == 200
    assert (await client.get(f"/live/paid/source/s9-seg-99.m4s?token={tok}")).status == 404
    assert (await client.get("/live/paid/poster.jpg")).status == 200  # posters are public
    assert await billed(origin) == []
    ranged = await client.get(
        f"/live/paid/source/s9-seg-4.m4s?token={tok}", headers={"Range": "bytes=0-99"}
    )
    assert ranged.status == 206 and len(await ranged.read()) == 100
    assert await billed(origin) == [(7, "paid", 9, 4, 2.0)]  # a range still bills once


async def test_an_unknown_duration_is_refused_not_served_unbilled(
    origin: Fixture, media: Path
) -> None:
    """An ended stream's segment outside the playlist on disk: its duration is unknown, so a
    priced channel refuses it (404) before sending a byte rather than serve it unbilled."""
    (media / "paid" / "source" / "s9-seg-6.m4s").write_bytes(b"x")  # not in the playlist
    tok = token()
    for method in (origin.client.get, origin.client.head):
        response = await method(f"/live/paid/source/s9-seg-6.m4s?token={tok}")
        assert response.status == 404
    assert await billed(origin) == [] and origin.gate.unknown_durations == 2
    free = await origin.client.get("/live/free/source/s9-seg-3.m4s")  # free channels: no gate
    assert free.status == 200
    init = await origin.client.get(f"/live/paid/source/s9-init.mp4?token={tok}")
    assert init.status == 200, "an init segment has no duration and is not billed"


async def test_the_gate_tells_the_service_which_session(origin: Fixture) -> None:
    """For the free preview: a segment's session from its name, a playlist's from the media
    prefix (``streams/{session}``)."""
    tok = token()
    for path in ("source/s9-seg-3.m4s", "master.m3u8", "180p/index.m3u8"):
        assert (await origin.client.get(f"/live/paid/{path}?token={tok}")).status == 200
    assert origin.billing.asked == [(7, 9), (7, 9), (7, 9)]
    origin.gate.media_prefix = lambda slug: None  # not streaming, never streamed
    assert (await origin.client.get(f"/live/paid/master.m3u8?token={tok}")).status == 200
    assert origin.billing.asked[-1] == (7, None)


async def test_the_price_is_looked_up_once_per_ttl(origin: Fixture) -> None:
    tok = token()
    await asyncio.gather(
        *(origin.client.get(f"/live/paid/source/s9-seg-3.m4s?token={tok}") for _ in range(20))
    )
    assert origin.lookups.count("paid") == 1


async def test_viewers_are_counted_by_token_viewer(origin: Fixture) -> None:
    for viewer, agent in [(7, "a"), (7, "b"), (8, "a")]:
        headers = {"User-Agent": agent}
        url = f"/live/paid/master.m3u8?token={token(viewer)}"
        assert (await origin.client.get(url, headers=headers)).status == 200
    assert origin.viewers.count("paid") == 2
    for agent in ("a", "b"):
        await origin.client.get("/live/free/master.m3u8", headers={"User-Agent": agent})
    assert origin.viewers.count("free") == 2


# -- pieces ------------------------------------------------------------------------------------
def test_sign_playlist_handles_queries_attributes_and_line_ends() -> None:
    text = '#EXTM3U\r\n#EXT-X-MAP:URI="init.mp4?v=2"\r\n#EXTINF:2.0,\r\nseg-1.m4s\r\n\r\n'
    assert sign_playlist(text, "T") == (
        '#EXTM3U\r\n#EXT-X-MAP:URI="init.mp4?v=2&token=T"\r\n#EXTINF:2.0,\r\nseg-1.m4s?token=T\r\n\r\n'
    )


def test_parse_extinf_maps_sequences_from_names() -> None:
    text = media_playlist(10, [2.0, 1.5]) + "#EXTINF:bad,\ns9-seg-12.m4s\n#EXTINF:2,\nother.ts\n"
    assert parse_extinf(text) == {10: 2.0, 11: 1.5}


def test_live_stream_durations_come_first(tmp_path: Path) -> None:
    stream = SimpleNamespace(segment_duration=lambda n: {5: 1.96}.get(n))
    manager: Any = SimpleNamespace(stream_for_session=lambda s: stream if s == 9 else None)
    durations = SegmentDurations(manager)
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "index.m3u8").write_text(media_playlist(4, [2.0, 2.0]))
    assert durations.duration(9, 5, folder / "s9-seg-5.m4s") == 1.96
    assert durations.duration(9, 4, folder / "s9-seg-4.m4s") == 2.0  # forgotten: from disk
    assert durations.duration(8, 5, folder / "s9-seg-5.m4s") == 2.0  # stream gone
    assert durations.duration(8, 7, folder / "s9-seg-7.m4s") is None


async def test_channel_cache_serves_stale_while_refreshing() -> None:
    now = [0.0]
    prices = {"c": 1}
    calls: list[str] = []

    def lookup(slug: str) -> Channel | None:
        calls.append(slug)
        return Channel(slug=slug, price_per_second=prices[slug]) if slug in prices else None

    cache = ChannelCache(lookup, ttl=5, clock=lambda: now[0])
    assert (await cache.get("c")).price_per_second == 1  # type: ignore[union-attr]
    assert await cache.get("nope") is None
    prices["c"] = 2
    now[0] = 6
    assert (await cache.get("c")).price_per_second == 1  # type: ignore[union-attr]  # stale
    await asyncio.sleep(0.05)
    for _ in range(20):
        if (await cache.get("c")).price_per_second == 2:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    assert (await cache.get("c")).price_per_second == 2  # type: ignore[union-attr]
    cache.forget("c")
    prices["c"] = 3
    assert (await cache.get("c")).price_per_second == 3  # type: ignore[union-attr]
    assert calls.count("c") == 3
