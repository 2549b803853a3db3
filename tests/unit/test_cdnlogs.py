"""CDN access logs → billing: the three formats, URL shapes, the ingester (tokens checked at the
line's time, idempotent, order-independent), cursors (resume, rotation, truncation), the CLI."""

from __future__ import annotations

import asyncio
import calendar
import gzip
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vilokanam.billing.cdnlogs.cursors import source_key
from vilokanam.billing.cdnlogs.formats import (
    CLOUDFRONT_FIELDS,
    BadLine,
    CloudFrontParser,
    CombinedParser,
    JsonParser,
    LogFetch,
    detect,
    parse_time_local,
)
from vilokanam.billing.cdnlogs.ingest import Catalog, CdnIngester, Summary
from vilokanam.billing.cdnlogs.paths import Media, classify
from vilokanam.billing.cdnlogs.reader import LogReader, identify
from vilokanam.billing.ledger import Ledger
from vilokanam.billing.service import BillingService
from vilokanam.billing.tokens import issue
from vilokanam.cli.main import app
from vilokanam.config import Settings
from vilokanam.origin.viewers import ViewerCounter, identity
from vilokanam.store import Store

SECRET = "cdn-logs-unit-secret-0123456789abcdef"
PRICE = 3
T0 = float(int(time.time()) // 60 * 60 - 86400)
"""A day ago, in whole seconds (lines over 30 days old are skipped)."""
FAR = 2**40
T = TypeVar("T")


# -- rendering lines as the CDNs write them (the parsers' inverse) ----------------------------
def _escape_nginx(text: str) -> str:
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}"
        for b in text.encode()
    )


def _uri(fetch: LogFetch) -> str:
    return quote(fetch.path) + (f"?{fetch.query}" if fetch.query else "")


def combined(fetch: LogFetch, offset: str = "+0000") -> str:
    sign = -1 if offset[0] == "-" else 1
    local = fetch.at + sign * (int(offset[1:3]) * 3600 + int(offset[3:5]) * 60)
    y, mo, d, h, mi, s, *_ = time.gmtime(local)
    stamp = f"{d:02d}/{calendar.month_abbr[mo]}/{y}:{h:02d}:{mi:02d}:{s:02d} {offset}"
    return (
        f'{fetch.client} - - [{stamp}] "{fetch.method} {_uri(fetch)} HTTP/1.1" {fetch.status} '
        f'{fetch.bytes} "-" "{_escape_nginx(fetch.user_agent)}"'
    )


def json_line(fetch: LogFetch) -> str:
    return json.dumps(
        {
            "msec": f"{fetch.at:.3f}",
            "time_iso8601": "ignored-when-msec-is-there",
            "remote_addr": fetch.client,
            "request_method": fetch.method,
            "request_uri": _uri(fetch),
            "status": fetch.status,
            "body_bytes_sent": fetch.bytes,
            "request_id": fetch.request_id,
            "upstream_cache_status": "HIT",
            "http_user_agent": fetch.user_agent,
            "http_referer": "",
        }
    )


def cloudfront(fetch: LogFetch, fields: tuple[str, ...] = CLOUDFRONT_FIELDS) -> str:
    date, clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(fetch.at)).split(" ")
    values = {
        "date": date,
        "time": clock,
        "sc-bytes": str(fetch.bytes),
        "c-ip": fetch.client,
        "cs-method": fetch.method,
        "cs-uri-stem": quote(fetch.path),
        "sc-status": str(fetch.status),
        "cs(User-Agent)": quote(fetch.user_agent, safe=""),
        "cs-uri-query": fetch.query or "-",
        "x-edge-request-id": fetch.request_id or "-",
    }
    return "\t".join(values.get(name, "-") for name in fields)


CLOUDFRONT_HEADER = "#Version: 1.0\n#Fields: " + " ".join(CLOUDFRONT_FIELDS) + "\n"


# -- formats ---------------------------------------------------------------------------------
def test_nginx_combined() -> None:
    parser = CombinedParser()
    line = (
        '203.0.113.9 - - [24/Nov/2026:23:11:02 +0530] "GET /live/paid/source/s4-seg-7.m4s?'
        'token=abc HTTP/1.1" 206 65536 "https://example/" "Mozilla/5.0 \\x22quoted\\x22 \\xC3\\xA9"'
        ' "extra" 0.003'
    )
    fetch = parser.parse(line)
    assert fetch == LogFetch(
        at=calendar.timegm((2026, 11, 24, 23, 11, 2)) - 5.5 * 3600,
        method="GET",
        path="/live/paid/source/s4-seg-7.m4s",
        query="token=abc",
        status=206,
        bytes=65536,
        client="203.0.113.9",
        user_agent='Mozilla/5.0 "quoted" é',
    )
    odd = parser.parse('10.0.0.1 - bob [24/Nov/2026:23:11:02 -0100] "-" 400 0 "-" "-"')
    assert odd is not None and (odd.path, odd.status, odd.user_agent) == ("", 400, "")
    bare = parser.parse('10.0.0.1 - - [24/Nov/2026:23:11:02 +0000] "GET /a%20b HTTP/1.0" 304 -')
    assert bare is not None and (bare.path, bare.bytes, bare.user_agent) == ("/a b", 0, "")
    assert parser.parse("   \n") is None
    for bad in ("garbage", '1.2.3.4 - - [99/Foo/2026:23:11:02 +0000] "GET / HTTP/1.1" 200 1'):
        with pytest.raises(BadLine):
            parser.parse(bad)
    assert parse_time_local("01/Jan/1970:01:00:00 +0100") == 0


def test_nginx_json_fields_and_aliases() -> None:
    parser = JsonParser()
    base = {"status": 200, "request_uri": "/live/x/s1-seg-2.m4s?token=t", "msec": T0 + 1.5}
    assert parser.parse(json.dumps(base)) == LogFetch(
        T0 + 1.5, "GET", "/live/x/s1-seg-2.m4s", "token=t", 200, 0, "", ""
    )
    iso = parser.parse(
        json.dumps(
            {"time_iso8601": "2026-11-24T23:11:02+01:00", "status": "206", "uri": "/a",
             "args": "token=z", "request_method": "HEAD", "bytes_sent": "7",
             "remote_addr": "::1", "http_user_agent": "ua", "request_id": "r1"}
        )
    )  # fmt: skip
    assert iso == LogFetch(
        calendar.timegm((2026, 11, 24, 22, 11, 2)), "HEAD", "/a", "token=z", 206, 7, "::1", "ua",
        "r1",
    )  # fmt: skip
    local = parser.parse(
        json.dumps({"time_local": "24/Nov/2026:23:11:02 +0000", "status": 404,
                    "request": "GET /b?x=1 HTTP/2.0"})
    )  # fmt: skip
    assert local is not None and (local.method, local.path, local.query) == ("GET", "/b", "x=1")
    for bad in ("[1]", "{not json", '{"status": 200}', '{"msec": 1, "request_uri": "/"}',
                '{"msec": "x", "status": 200, "request_uri": "/"}'):  # fmt: skip
        with pytest.raises(BadLine):
            parser.parse(bad)


def test_cloudfront_header_order_encoding_and_missing_fields() -> None:
    parser = CloudFrontParser()
    assert parser.parse("#Version: 1.0") is None
    assert parser.parse("#Fields: time date cs-uri-stem sc-status cs(User-Agent)") is None
    fetch = parser.parse(
        "23:11:02\t2026-11-24\t/streams/4/720p/s4-seg-9.m4s\t200\tMozilla/5.0%20(X11)"
    )
    assert fetch == LogFetch(
        float(calendar.timegm((2026, 11, 24, 23, 11, 2))), "GET", "/streams/4/720p/s4-seg-9.m4s",
        "", 200, 0, "", "Mozilla/5.0 (X11)", "",
    )  # fmt: skip
    with pytest.raises(BadLine):
        parser.parse("23:11:02\t2026-11-24\t/x")  # a short line: no status
    with pytest.raises(BadLine):
        parser.parse("99:11:02\t2026-11-24\t/x\t200")
    default = CloudFrontParser()  # no header: the standard v1.0 columns
    line = cloudfront(LogFetch(T0, "GET", "/p/streams/1/a/s1-seg-0.ts", "token=q", 200, 10,
                               "198.51.100.1", "Agent/1 (a b)", "id=="))  # fmt: skip
    assert default.parse(line) == LogFetch(
        T0, "GET", "/p/streams/1/a/s1-seg-0.ts", "token=q", 200, 10, "198.51.100.1",
        "Agent/1 (a b)", "id==",
    )  # fmt: skip


def test_format_detection() -> None:
    fetch = LogFetch(T0, "GET", "/live/a/index.m3u8", "", 200, 1, "1.2.3.4", "ua")
    assert detect(combined(fetch)) == "nginx"
    assert detect(json_line(fetch)) == "nginx-json"
    assert detect("#Version: 1.0") == "cloudfront"
    assert detect(cloudfront(fetch)) == "cloudfront"
    assert detect("hello world") is None


user_agents = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    lambda text: text != "-"  # every format logs a missing value as "-"
)
paths = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/?%"), min_size=1,
            max_size=8),
    min_size=1, max_size=4,
).map(lambda parts: "/" + "/".join(parts))  # fmt: skip
queries = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=&", max_size=60)
queries = queries.filter(lambda text: text != "-")
fetches = st.builds(
    LogFetch,
    at=st.integers(946_684_800_000, 4_102_444_799_000).map(lambda ms: ms / 1000),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    path=paths,
    query=queries,
    status=st.integers(100, 599),
    bytes=st.integers(0, 2**40),
    client=st.ip_addresses(v=4).map(str),
    user_agent=user_agents,
    request_id=st.text("0123456789abcdef", min_size=1, max_size=32),
)


@settings(max_examples=200, deadline=None)
@given(fetch=fetches, offset=st.sampled_from(["+0000", "+0530", "-0800"]))
def test_parsing_a_rendered_line_round_trips(fetch: LogFetch, offset: str) -> None:
    whole = replace(fetch, at=float(int(fetch.at)))  # combined and CloudFront: whole seconds
    assert CombinedParser().parse(combined(whole, offset)) == replace(whole, request_id="")
    assert JsonParser().parse(json_line(fetch)) == fetch
    assert CloudFrontParser().parse(cloudfront(whole)) == whole


# -- URL paths -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/live/paid/720p/s12-seg-34.m4s", Media("segment", 12, 34, "paid", "720p")),
        ("/vod/12/720p/s12-seg-34.m4s", Media("segment", 12, 34, None, "720p")),
        ("/media/streams/12/720p/s12-seg-34.ts", Media("segment", 12, 34, None, "720p")),
        ("/streams/12/720p/s12-seg-34.m4s", Media("segment", 12, 34, None, "720p")),
        ("/live/paid/720p/index.m3u8", Media("media_playlist", None, None, "paid", "720p")),
        ("/vod/12/720p/index.m3u8", Media("media_playlist", 12, None, None, "720p")),
        ("/p/streams/12/720p/index.m3u8", Media("media_playlist", 12, None, None, "720p")),
        ("/live/paid/master.m3u8", Media("playlist", None, None, "paid")),
        ("/vod/12/master.m3u8", Media("playlist", 12)),
        ("/live/paid/720p/s12-init.mp4", None),
        ("/live/paid/poster.jpg", None),
        ("/watch/paid", None),
        ("/other/index.m3u8", None),
        ("", None),
    ],
)
def test_paths(path: str, media: Media | None) -> None:
    assert classify(path) == media


# -- the ingester ----------------------------------------------------------------------------
@dataclass
class World:
    settings: Settings
    store: Store
    paid: int
    free: int
    session: int
    free_session: int
    ann: int
    bob: int
    durations_ms: list[int]

    def token(self, viewer: int, slug: str = "paid", expires: int = FAR) -> str:
        return issue(SECRET, viewer, slug, expires)

    def segment(self, viewer: int | None, sequence: int, at: float, **changes: Any) -> LogFetch:
        query = "" if viewer is None else f"token={self.token(viewer)}"
        path = f"/live/paid/source/s{self.session}-seg-{sequence}.m4s"
        fetch = LogFetch(at, "GET", path, query, 200, 1000, "192.0.2.1", "player/1")
        return replace(fetch, **changes)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = Settings.model_validate(
        {"data_dir": str(tmp_path), "billing": {"token_secret": SECRET, "platform_fee_bps": 0}}
    )
    store = Store(settings.database_url)
    paid, _ = store.create_channel("paid", price_per_second=PRICE)
    free, _ = store.create_channel("free")
    session = store.start_session(paid.id or 0).id or 0
    free_session = store.start_session(free.id or 0).id or 0
    durations = [2000, 1500, 2500] * 20
    store.update_session(session, durations_ms=durations)
    store.update_session(free_session, durations_ms=durations)
    ledger = Ledger(store)
    viewers = []
    for name in ("ann", "bob"):
        viewer, _ = store.create_viewer(name)
        ledger.deposit(viewer.id or 0, 10_000_000, f"d-{name}")
        viewers.append(viewer.id or 0)
    yield World(settings, store, paid.id or 0, free.id or 0, session, free_session, *viewers,
                durations)  # fmt: skip
    store.close()


class LiveStreams:
    """The server's streams as the catalog asks them: ``slug → live session``."""

    def __init__(self, live: dict[str, int]) -> None:
        self.live = live

    def stream_for_slug(self, slug: str) -> Any:
        session = self.live.get(slug)
        return None if session is None else SimpleNamespace(session_id=session)

    def stream_for_session(self, session_id: int) -> None:
        return None

    def media_prefix(self, slug: str) -> str | None:
        session = self.live.get(slug)
        return None if session is None else f"streams/{session}"


def _run(
    world: World,
    action: Callable[[CdnIngester], Awaitable[T]],
    persist: bool = True,
    manager: LiveStreams | None = None,
    **options: Any,
) -> T:
    """``action(ingester)`` with a fresh billing service, flushed after unless not ``persist``
    (then nothing reaches the database: runs of one example stay apart). ``manager``: the
    server's live streams (None: in-process, nothing known live)."""

    async def go() -> T:
        billing = BillingService(world.store, world.settings)
        if persist:
            await billing.start()
        try:
            catalog = Catalog(world.store, world.settings, manager)  # type: ignore[arg-type]
            return await action(CdnIngester(billing, catalog, SECRET.encode(), **options))
        finally:
            if persist:
                await billing.stop()

    return asyncio.run(go())


def _watched(ingester: CdnIngester, viewer: int, session: int) -> tuple[int, int]:
    """(whole seconds due, content ms credited + waiting) of a viewer in a session."""
    state = ingester.billing.tracker.state(viewer, session)
    return (0, 0) if state is None else (state.ticks_to, state.content_ms + state.pending_ms)


def _paced(world: World, viewer: int, count: int, start: float = T0) -> list[LogFetch]:
    """A player fetching ``count`` sequences as they play, plus media playlist polls."""
    lines, at = [], start
    for sequence in range(count):
        lines.append(world.segment(viewer, sequence, at))
        lines.append(replace(lines[-1], path="/live/paid/source/index.m3u8", at=at + 0.5))
        at += world.durations_ms[sequence] / 1000
    return lines


def test_paced_lines_bill_exactly_the_content_and_rereading_bills_nothing(world: World) -> None:
    lines = _paced(world, world.ann, 10)
    expected = sum(world.durations_ms[:10]) // 1000

    async def twice(ingester: CdnIngester) -> list[Summary]:
        return [await ingester.feed(lines), await ingester.feed(lines)]

    first, second = _run(world, twice)
    assert (first.segments, first.billed, first.ticks, first.playlists) == (10, 10, expected, 10)
    assert (second.billed, second.ticks) == (10, 0)
    later = _run(world, lambda ingester: ingester.feed(lines))  # a new process: states reloaded
    assert later.ticks == 0
    ledger = Ledger(world.store)
    assert ledger.viewer_balance(world.ann) == 10_000_000 - expected * PRICE
    assert ledger.sum_of_all_postings() == 0


def test_tokens_are_checked_at_the_line_time(world: World) -> None:
    """A token that expired since is still good for lines logged before its expiry; one that
    was expired then bills nothing, whatever the time now."""
    expires = int(T0) + 7
    token = world.token(world.ann, expires=expires)
    lines = [replace(f, query=f"token={token}") for f in _paced(world, world.ann, 6)]
    bad = [
        world.segment(None, 40, T0),
        world.segment(world.bob, 41, T0, query="token=garbage"),
        world.segment(
            world.bob, 42, T0, query=f"token={issue('other-secret-xxxxxxxxxx', 1, 'paid', FAR)}"
        ),
        world.segment(world.bob, 43, T0, query=f"token={world.token(world.bob, 'free')}"),
        world.segment(world.bob, 44, T0, method="HEAD"),
        world.segment(world.bob, 45, T0, status=404),
        world.segment(world.bob, 46, T0, status=502),
        world.segment(world.bob, 47, T0, path=f"/live/free/source/s{world.session}-seg-47.m4s"),
        world.segment(world.bob, 48, T0, path="/live/paid/source/s999-seg-48.m4s"),
        world.segment(world.bob, 9999, T0),  # no duration known anywhere
    ]
    summary = _run(world, lambda ingester: ingester.feed(lines + bad))
    # segments at 0, 2, 3.5 and 6 s fetched before the expiry at 7 s; at 8 and 9.5 s after it
    # (and two playlist polls)
    assert summary.billed == 4 and summary.ticks == (2000 + 1500 + 2500 + 2000) // 1000
    assert summary.skipped == {
        "token expired": 4,
        "missing token": 1,
        "malformed token": 1,
        "bad signature": 1,
        "token is for another channel": 1,
        "HEAD request": 1,
        "status 4xx": 1,
        "status 5xx": 1,
        "segment of another channel": 1,
        "unknown stream session": 1,
        "unknown segment duration": 1,
    }


def test_free_channels_count_viewers_and_bill_nothing(world: World) -> None:
    clock = [1000.0]
    counter = ViewerCounter(30, clock=lambda: clock[0])
    now = T0 + 100
    free_path = f"/live/free/source/s{world.free_session}-seg-1.m4s"
    lines = [
        LogFetch(now - 5, "GET", free_path, "", 200, 1, "192.0.2.1", "a"),
        LogFetch(now - 5, "GET", free_path, "", 200, 1, "192.0.2.2", "a"),
        LogFetch(now - 4, "GET", free_path, "", 200, 1, "192.0.2.2", "a"),  # the same client
        LogFetch(now - 40, "GET", free_path, "", 200, 1, "192.0.2.3", "a"),  # gone by now
        world.segment(world.ann, 3, now - 2),
        world.segment(world.bob, 3, now - 1, status=403),  # refused: not a viewer
        replace(world.segment(world.bob, 4, now - 1), path="/live/paid/source/index.m3u8"),
    ]
    live = LiveStreams({"free": world.free_session, "paid": world.session})
    summary = _run(
        world, lambda ing: ing.feed(lines), manager=live, viewers=counter, wall=lambda: now
    )
    assert (summary.free, summary.billed, summary.playlists) == (4, 1, 1)
    assert counter.count("free") == 2
    assert counter.count("paid") == 2  # ann (segment) and bob (playlist)
    clock[0] += 27  # ann's line was 2 s old, bob's 1 s: both still within 30 s
    assert counter.count("paid") == 2 and counter.count("free") == 0
    clock[0] += 1.5
    assert counter.count("paid") == 1
    counter.note("paid", identity("", "", world.bob))  # seen now by the origin
    clock[0] += 29
    assert counter.count("paid") == 1 and counter.channels() == ["paid"]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 5),  # viewer
            st.integers(0, 90).map(lambda half: half / 2),  # age of the sighting (0: now)
            st.integers(0, 30).map(lambda half: half / 2),  # seconds passing after it
            st.sampled_from(["a", "b"]),  # channel
        ),
        max_size=60,
    )
)
def test_viewer_counts_with_sightings_from_the_past_match_a_plain_model(
    steps: list[tuple[int, float, float, str]],
) -> None:
    """Origin sightings (now) and log sightings (some seconds ago), in any mix: the count is
    the viewers last seen within the timeout, as a dict of last-seen times says."""
    clock = [1000.0]
    counter = ViewerCounter(30, clock=lambda: clock[0])
    last: dict[tuple[str, int], float] = {}
    for viewer, age, later, slug in steps:
        counter.note(slug, bytes([viewer]), age=age)
        key = (slug, viewer)
        last[key] = max(last.get(key, -1e9), clock[0] - age)
        clock[0] += later
        for name in ("a", "b"):
            alive = [v for (s, v), at in last.items() if s == name and at >= clock[0] - 30]
            assert counter.count(name) == len(alive), (name, last, clock[0])
    counter.expire()
    assert set(counter.channels()) == {s for (s, _), at in last.items() if at >= clock[0] - 30}


# a player's fetches: (sequence, seconds after the previous fetch)
players = st.lists(st.tuples(st.integers(0, 20), st.floats(0, 4.0)), min_size=1, max_size=25)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ann=players, bob=players, seed=st.integers(0, 2**32), chunks=st.integers(1, 6))
def test_any_interleaving_or_duplication_bills_like_the_unique_lines(
    world: World, ann: list[tuple[int, float]], bob: list[tuple[int, float]], seed: int,
    chunks: int,
) -> None:  # fmt: skip
    lines = []
    for viewer, steps in ((world.ann, ann), (world.bob, bob)):
        at = T0
        for sequence, step in steps:
            at += step
            lines.append(world.segment(viewer, sequence, round(at, 3)))
            if step > 2:
                lines.append(replace(lines[-1], path="/live/paid/source/index.m3u8"))
    lines.sort(key=lambda fetch: fetch.at)
    rng = random.Random(seed)
    # consecutive time windows of the lines, each shuffled with duplicates of lines fed already
    cuts = sorted(rng.sample(range(len(lines) + 1), min(chunks, len(lines) + 1)))
    batches, fed = [], []
    for start, end in zip([0, *cuts], [*cuts, len(lines)], strict=True):
        window = lines[start:end]
        fed += window
        batch = window + rng.choices(fed, k=rng.randint(0, len(fed))) if fed else window
        rng.shuffle(batch)
        batches.append(batch)

    def outcome(feeds: list[list[LogFetch]]) -> list[tuple[int, int]]:
        async def go(ingester: CdnIngester) -> list[tuple[int, int]]:
            for batch in feeds:
                await ingester.feed(batch)
            return [_watched(ingester, viewer, world.session) for viewer in (world.ann, world.bob)]

        return _run(world, go, persist=False)

    unique = outcome([sorted(set(lines), key=lambda fetch: fetch.at)])
    assert outcome(batches) == unique


# -- files and cursors -----------------------------------------------------------------------
def _ingest(world: World, paths: list[Path]) -> list[Any]:
    async def go(ingester: CdnIngester) -> list[Any]:
        return await LogReader(ingester).ingest(paths)

    return _run(world, go)


def test_resume_rename_truncate_and_gzip(world: World, tmp_path: Path) -> None:
    lines = [json_line(fetch) for fetch in _paced(world, world.ann, 12)]
    log = tmp_path / "access.json"
    log.write_text("\n".join(lines[:8]) + "\n" + lines[8][:20])  # a line still being written
    (first,) = _ingest(world, [log])
    assert (first.format, first.start, first.summary.lines, first.summary.segments) == (
        "nginx-json", 0, 8, 4,
    )  # fmt: skip
    assert first.end == len("\n".join(lines[:8])) + 1
    log.write_text("\n".join(lines[:16]) + "\n")  # the line completed, more written
    (again,) = _ingest(world, [log])
    assert (again.start, again.summary.lines, again.summary.segments) == (first.end, 8, 4)
    log.rename(tmp_path / "access.json.1")  # rotated
    (renamed,) = _ingest(world, [tmp_path / "access.json.1"])
    assert renamed.note == "resumed from access.json" and renamed.summary.lines == 0
    expected = sum(world.durations_ms[:8]) // 1000
    assert Ledger(world.store).viewer_balance(world.ann) == 10_000_000 - expected * PRICE

    (tmp_path / "access.json.1").write_text("\n".join(lines[:2]) + "\n")  # truncated, rewritten
    (truncated,) = _ingest(world, [tmp_path / "access.json.1"])
    assert truncated.note == "truncated: read from the start" and truncated.summary.lines == 2
    assert truncated.summary.ticks == 0

    packed = tmp_path / "E2ABC.2026-11-24-23.abcd.gz"
    with gzip.open(packed, "wt") as file:
        file.write(CLOUDFRONT_HEADER)
        file.writelines(cloudfront(fetch) + "\n" for fetch in _paced(world, world.ann, 12))
        file.write("not\ta\tline\n")
    (whole,) = _ingest(world, [packed])
    assert (whole.format, whole.summary.segments, whole.summary.bad_lines) == ("cloudfront", 12, 1)
    assert whole.summary.ticks == sum(world.durations_ms[:12]) // 1000 - expected
    (done,) = _ingest(world, [packed])
    assert done.note == "nothing new" and done.summary.lines == 0
    ident = identify(packed, True)
    assert ident is not None and ident.first_at == T0
    assert source_key(ident.digest, "x" * 400).startswith(ident.digest + ":")
    assert len(source_key(ident.digest, "x" * 400)) <= 255


def test_a_new_first_line_is_a_new_file_and_unknown_formats_are_said(
    world: World, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    fetches = _paced(world, world.bob, 4)
    log.write_text("".join(combined(fetch) + "\n" for fetch in fetches))
    (first,) = _ingest(world, [log])
    assert first.format == "nginx" and first.summary.billed == 4
    log.write_text("".join(combined(fetch) + "\n" for fetch in fetches[1:]))  # replaced
    (second,) = _ingest(world, [log])
    assert second.start == 0 and second.source != first.source and second.summary.ticks == 0
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    empty = tmp_path / "empty.log"
    empty.write_text("")
    reports = _ingest(world, [junk, empty])
    assert {r.note for r in reports} == {"unknown format (use --format)", "no complete line yet"}


def test_watch_tails_a_folder(world: World, tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    lines = [json_line(fetch) + "\n" for fetch in _paced(world, world.ann, 6)]
    (folder / "a.log").write_text("".join(lines[:4]))
    seen: list[int] = []

    async def go(ingester: CdnIngester) -> Summary:
        stop = asyncio.Event()
        reader = LogReader(ingester, on_batch=lambda path, summary: seen.append(summary.lines))
        task = asyncio.create_task(reader.watch(folder, interval=0.05, stop=stop))
        await asyncio.sleep(0.3)
        with open(folder / "a.log", "a") as file:
            file.writelines(lines[4:])
        (folder / "b.log").write_text(lines[3])  # another file: a line read before again
        await asyncio.sleep(0.3)
        stop.set()
        return await task

    total = _run(world, go)
    assert sorted(seen) == [1, 4, 8] and total.lines == 13
    assert total.ticks == sum(world.durations_ms[:6]) // 1000


def test_cli_ingests_in_process_without_a_server(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VILOKANAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VILOKANAM_BILLING_TOKEN_SECRET", SECRET)
    log = tmp_path / "access.log"
    log.write_text("".join(combined(fetch) + "\n" for fetch in _paced(world, world.ann, 5)))
    runner = CliRunner()
    result = runner.invoke(app, ["billing", "ingest-logs", str(log), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    expected = sum(world.durations_ms[:5]) // 1000
    assert info["total"]["billed"] == 5 and info["total"]["ticks"] == expected
    assert Ledger(world.store).viewer_balance(world.ann) == 10_000_000 - expected * PRICE
    again = runner.invoke(app, ["billing", "ingest-logs", str(log), "--json"])
    assert again.exit_code == 0 and json.loads(again.output)["files"][0]["note"] == "nothing new"
    table = runner.invoke(app, ["billing", "ingest-logs", str(log)])
    assert table.exit_code == 0 and "access.log" in table.output and "billed" in table.output
    bad = runner.invoke(app, ["billing", "ingest-logs", str(log), "--format", "apache"])
    assert bad.exit_code == 2 and "--format" in bad.output
    none = runner.invoke(app, ["billing", "ingest-logs"])
    assert none.exit_code == 2


# -- review fixes: garbled, over-long, out-of-order, out-of-range lines ------------------------
SEG = "/live/ab/s1-seg-1.m4s"
CF = "\tX\t100\t1.2.3.4\tGET\th\t/s1-seg-1.m4s\t"
NGINX = '1.2.3.4 - - [24/Nov/2026:23:11:02 +0000] "GET / HTTP/1.1" '


@pytest.mark.parametrize(
    ("parser", "line"),
    [
        (JsonParser(), f'{{"msec":{T0},"request_uri":"{SEG}","status":1e400}}'),
        (JsonParser(), f'{{"msec":{T0},"request_uri":"{SEG}","status":NaN}}'),
        (JsonParser(), f'{{"msec":{T0},"request_uri":"{SEG}","status":200,"bytes_sent":"inf"}}'),
        (JsonParser(), f'{{"msec":{T0},"request_uri":"{SEG}","status":200,"bytes_sent":-1}}'),
        (JsonParser(), f'{{"msec":"NaN","request_uri":"{SEG}","status":200}}'),
        (JsonParser(), f'{{"msec":"Infinity","request_uri":"{SEG}","status":200}}'),
        (JsonParser(), f'{{"msec":0,"request_uri":"{SEG}","status":200}}'),
        (JsonParser(), f'{{"msec":1e300,"request_uri":"{SEG}","status":200}}'),
        (JsonParser(), "[" * 50_000 + "]" * 50_000),
        (CloudFrontParser(), "2026-11-24\t23:11:02" + CF + "2\u00b2\u00b2"),  # "²".isdigit()
        (CloudFrontParser(), "1970-01-01\t00:00:00" + CF + "200"),
        (CombinedParser(), NGINX + "\u0662\u0660\u0660 1"),  # Arabic-Indic digits
        (CombinedParser(), NGINX + "200 99999999999999999999"),
    ],
)  # fmt: skip
def test_garbled_lines_are_bad_lines_never_crashes(parser: Any, line: str) -> None:
    with pytest.raises(BadLine):
        parser.parse(line)


def test_a_garbled_combined_line_is_matched_in_linear_time() -> None:
    line = "1.2.3.4 - " + " [" * 30_000  # 13+ s with the old nested quantifiers
    started = time.perf_counter()
    with pytest.raises(BadLine):
        CombinedParser().parse(line)
    assert detect(line) is None
    assert time.perf_counter() - started < 0.5


def test_over_long_fields_are_cut_or_the_line_is_bad_and_the_api_takes_every_batch(
    world: World, tmp_path: Path
) -> None:
    from vilokanam.billing.cdnlogs.formats import CombinedParser as Parser
    from vilokanam.billing.cdnlogs.reader import read_batches
    from vilokanam.origin.api.schemas import CdnBatchIn

    good = _paced(world, world.ann, 3)
    long_agent = replace(good[0], user_agent="A" * 3000, status=404, query="")
    long_path = replace(good[0], path="/live/paid/" + "p" * 5000 + "/s1-seg-1.m4s")
    log = tmp_path / "a.log"
    log.write_text("".join(combined(f) + "\n" for f in [*good, long_agent, long_path]))
    (batch,) = list(read_batches(log, False, Parser(), "k:a.log", 0))
    assert (batch.lines, batch.bad_lines, len(batch.fetches)) == (8, 1, 7)
    assert batch.fetches[-1].user_agent == "A" * 2048
    body = json.loads(json.dumps({**asdict_batch(batch)}))
    assert len(CdnBatchIn.model_validate(body).fetches) == 7  # was a 422 for ever

    # the API skips (and counts) what fails its checks, one fetch at a time
    body["fetches"][0]["user_agent"] = "B" * 3000
    body["fetches"][1]["at"] = float("nan")
    body["fetches"][2]["method"] = "X" * 17
    checked = CdnBatchIn.model_validate(body)
    assert len(checked.fetches) == 4
    assert checked.invalid_fetches() == {
        "invalid user_agent": 1, "invalid at": 1, "invalid method": 1,
    }  # fmt: skip
    from pydantic import ValidationError

    for change in ({"start": 2**63}, {"end": 2**64}, {"fetches": [body["fetches"][3]] * 10_001}):
        with pytest.raises(ValidationError):
            CdnBatchIn.model_validate({**body, **change})


def asdict_batch(batch: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(batch) | {"fetches": [asdict(fetch) for fetch in batch.fetches]}


def test_an_over_long_line_is_skipped_without_holding_it(world: World, tmp_path: Path) -> None:
    import tracemalloc

    from vilokanam.billing.cdnlogs.formats import JsonParser as Parser
    from vilokanam.billing.cdnlogs.reader import read_batches

    good = [json_line(fetch) for fetch in _paced(world, world.ann, 2)]
    bomb = tmp_path / "bomb.json.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as file:
        file.write((good[0] + "\n").encode())
        for _ in range(32):
            file.write(b"x" * (1 << 20))  # one 32 MiB line
        file.write(("\n" + "\n".join(good[1:]) + "\n").encode())
    tracemalloc.start()
    try:
        batches = list(read_batches(bomb, True, Parser(), "k:bomb", 0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(b.lines for b in batches) == 5 and sum(b.bad_lines for b in batches) == 1
    assert sum(len(b.fetches) for b in batches) == 4
    assert peak < 4 << 20, f"{peak} bytes held"
    text = tmp_path / "long.log"  # a text file: the over-long line is skipped the same way
    text.write_text(good[0] + "\n" + "y" * 200_000 + "\n" + good[1] + "\n" + "z" * 100_000)
    (batch,) = list(read_batches(text, False, Parser(), "k:long", 0))
    assert (batch.lines, batch.bad_lines, len(batch.fetches), batch.end) == (
        3,
        1,
        2,
        len(good[0]) + len(good[1]) + 200_003,
    )  # fmt: skip  (the unfinished last line waits)


def test_a_truncated_gzip_fails_alone(world: World, tmp_path: Path) -> None:
    data = gzip.compress(
        (CLOUDFRONT_HEADER + "".join(cloudfront(f) + "\n" for f in _paced(world, world.ann, 50)))
        .encode()
    )  # fmt: skip
    broken = tmp_path / "E1.a.gz"
    broken.write_bytes(data[: len(data) * 2 // 3])  # a download cut short
    whole = tmp_path / "E1.b.gz"
    bob = _paced(world, world.bob, 5, start=T0 + 500)
    whole.write_bytes(
        gzip.compress((CLOUDFRONT_HEADER + "".join(cloudfront(f) + "\n" for f in bob)).encode())
    )
    reports = {Path(r.path).name: r for r in _ingest(world, [broken, whole])}
    assert reports["E1.a.gz"].failed and "ended before" in reports["E1.a.gz"].note
    poster = replace(bob[0], path="/live/paid/poster.jpg", at=T0 + 1000)
    long = gzip.compress(
        (CLOUDFRONT_HEADER + "".join(cloudfront(replace(poster, request_id=str(n))) + "\n"
                                     for n in range(20_000))).encode()
    )  # fmt: skip
    cut = tmp_path / "E1.c.gz"  # fails after some batches were read
    cut.write_bytes(long[: len(long) // 2])
    (report,) = _ingest(world, [cut])
    assert report.failed and report.note.startswith("failed:") and report.end > 0
    assert not reports["E1.b.gz"].failed and reports["E1.b.gz"].summary.billed == 5
    expected = sum(world.durations_ms[:5]) // 1000
    assert Ledger(world.store).viewer_balance(world.bob) == 10_000_000 - expected * PRICE


def test_files_read_out_of_time_order_bill_everything(world: World) -> None:
    """The later half of a viewer's lines fed first (another file), the earlier half next, in
    another process: all of it is billed (was: the earlier half waited for ever)."""
    lines = _paced(world, world.ann, 60)
    early, late = lines[:60], lines[60:]
    _run(world, lambda ingester: ingester.feed(late))
    summary = _run(world, lambda ingester: ingester.feed(early))
    expected = sum(world.durations_ms[:60]) // 1000
    assert Ledger(world.store).viewer_balance(world.ann) == 10_000_000 - expected * PRICE
    assert summary.ticks == expected - sum(world.durations_ms[30:60]) // 1000


def test_watch_reads_files_oldest_first_and_unknown_ones_once(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vilokanam.billing.cdnlogs import reader as reader_module

    folder = tmp_path / "logs"
    folder.mkdir()
    lines = [json_line(fetch) + "\n" for fetch in _paced(world, world.ann, 6)]
    (folder / "a.log").write_text("".join(lines[6:]))  # the later lines, first by name
    (folder / "b.log").write_text("".join(lines[:6]))
    (folder / "junk.txt").write_text("hello\n")
    identified: list[str] = []
    real = reader_module.identify

    def spy(path: Path, *args: Any) -> Any:
        identified.append(path.name)
        return real(path, *args)

    monkeypatch.setattr(reader_module, "identify", spy)
    order: list[str] = []

    async def go(ingester: CdnIngester) -> Summary:
        stop = asyncio.Event()
        reader = LogReader(ingester, on_batch=lambda path, _: order.append(path.name))
        task = asyncio.create_task(reader.watch(folder, interval=0.02, stop=stop))
        await asyncio.sleep(0.3)
        stop.set()
        return await task

    total = _run(world, go)
    assert order == ["b.log", "a.log"]
    assert identified.count("junk.txt") == 1, "an unknown format is not read again unchanged"
    assert total.ticks == sum(world.durations_ms[:6]) // 1000


def test_lines_out_of_the_time_window_are_skipped(world: World) -> None:
    now = T0 + 100
    lines = [
        world.segment(world.ann, 0, now - 31 * 86400),  # would pin the first fetch far back
        world.segment(world.ann, 1, now + 3600),
        world.segment(world.ann, 2, float("nan")),
        world.segment(world.ann, 3, now - 10),
    ]
    summary = _run(world, lambda ing: ing.feed(lines), wall=lambda: now)
    assert summary.skipped == {"too old": 2, "in the future": 1} and summary.billed == 1
    state = BillingService(world.store, world.settings)
    assert state.tracker.state(world.ann, world.session) is None  # nothing else in memory
    with world.store.session() as db:
        from vilokanam.store.models import WatchState

        (saved,) = db.exec(select_states(WatchState)).all()
        assert saved.first_fetch_at.timestamp() == pytest.approx(now - 10)


def select_states(model: Any) -> Any:
    from sqlmodel import select

    return select(model)


def test_live_viewer_counts_only_from_the_current_live_session(world: World) -> None:
    clock = [1000.0]
    counter = ViewerCounter(30, clock=lambda: clock[0])
    now = T0 + 100
    old = world.store.start_session(world.free).id or 0  # a later session is live now
    live = LiveStreams({"free": old})
    vod = f"/vod/{world.free_session}/source/s{world.free_session}-seg-1.m4s"
    bucket_old = f"/media/streams/{world.free_session}/source/s{world.free_session}-seg-1.m4s"
    current = f"/live/free/source/s{old}-seg-1.m4s"
    lines = [
        LogFetch(now - 1, "GET", vod, "", 200, 1, "192.0.2.1", "a"),
        LogFetch(now - 1, "GET", bucket_old, "", 200, 1, "192.0.2.2", "a"),
        LogFetch(now - 1, "GET", current, "", 200, 1, "192.0.2.3", "a"),
        LogFetch(now - 1, "GET", "/live/free/source/index.m3u8", "", 200, 1, "192.0.2.4", "a"),
    ]
    _run(world, lambda ing: ing.feed(lines), manager=live, viewers=counter, wall=lambda: now)
    assert counter.count("free") == 2  # the current session's segment and the live playlist
    nobody = ViewerCounter(30, clock=lambda: clock[0])
    _run(world, lambda ing: ing.feed(lines), viewers=nobody, wall=lambda: now)
    assert nobody.count("free") == 0, "in-process: nothing is known live"


def test_remote_target_waits_for_the_server_and_goes_on(world: World) -> None:
    from vilokanam.billing.cdnlogs.ingest import Batch
    from vilokanam.cli.backend import ServerUnavailable, ServerUnreachable
    from vilokanam.cli.cdnlogs import RemoteTarget

    answers: list[Any] = [
        None,
        ServerUnreachable("connection refused"),
        ServerUnavailable("HTTP 503: restarting"),
    ]
    sent: list[dict[str, Any]] = []

    class Api:
        def cdn_fetches(self, body: dict[str, Any]) -> dict[str, Any]:
            if answers:
                raise answers.pop(0) or ServerUnreachable("down")
            sent.append(body)
            cursor = {"source": body["source"], "offset": body["end"], "lines": 1, "fetches": 0}
            return {"summary": Summary(lines=1).as_dict(), "cursor": cursor}

    api = Api()
    said: list[str] = []
    calls = [0]

    def factory() -> Any:
        calls[0] += 1
        return None if calls[0] == 1 else api  # the local server has not started yet

    async def go() -> Any:
        target = RemoteTarget(factory, wait=True, say=said.append)
        target.first_retry = 0.01
        return await target.submit(Batch("k:a", 0, 10, 1, 0, 0, []))

    summary, cursor = asyncio.run(go())
    assert cursor.offset == 10 and summary.lines == 1 and len(sent) == 1
    assert len(said) == 4 and all(text.startswith("waiting for the server") for text in said)


def test_cli_watch_never_bills_in_process(world: World, tmp_path: Path) -> None:
    """``--watch`` with no server: it waits for one, and bills nothing on its own (a server
    started meanwhile would bill beside it and each would hold back the other's content)."""
    import os
    import signal
    import subprocess
    import sys

    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "a.log").write_text(
        "".join(combined(fetch) + "\n" for fetch in _paced(world, world.ann, 5))
    )
    env = os.environ | {
        "VILOKANAM_DATA_DIR": str(tmp_path),
        "VILOKANAM_BILLING_TOKEN_SECRET": SECRET,
        "VILOKANAM_HTTP_PORT": "9",  # nothing answers there
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "from vilokanam.cli.main import app; app()", "billing",
         "ingest-logs", "--watch", str(folder)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "waiting for the server" in first, first
        assert time.monotonic() < deadline
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert Ledger(world.store).viewer_balance(world.ann) == 10_000_000


def test_a_503_from_the_server_is_unavailable_not_a_final_error() -> None:
    """What a restarting server (or a proxy in front of it) answers is retried by --watch."""
    import http.server
    import threading

    from vilokanam.cli.backend import CliError, RemoteBackend, ServerUnavailable

    status = [503]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"error": "billing_unavailable", "detail": "restarting"}'
            self.send_response(status[0])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = RemoteBackend(f"http://127.0.0.1:{server.server_address[1]}", "t" * 20)
        with pytest.raises(ServerUnavailable, match="billing_unavailable"):
            api.cdn_cursor("k:a")
        status[0] = 404
        with pytest.raises(CliError) as error:
            api.cdn_cursor("k:a")
        assert not isinstance(error.value, ServerUnavailable)
    finally:
        server.shutdown()
