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
T0 = 1_790_000_000.0
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
    base = {"status": 200, "request_uri": "/live/x/s1-seg-2.m4s?token=t", "msec": 1.5}
    assert parser.parse(json.dumps(base)) == LogFetch(
        1.5, "GET", "/live/x/s1-seg-2.m4s", "token=t", 200, 0, "", ""
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


def _run(
    world: World,
    action: Callable[[CdnIngester], Awaitable[T]],
    persist: bool = True,
    **options: Any,
) -> T:
    """``action(ingester)`` with a fresh billing service, flushed after unless not ``persist``
    (then nothing reaches the database: runs of one example stay apart)."""

    async def go() -> T:
        billing = BillingService(world.store, world.settings)
        if persist:
            await billing.start()
        try:
            catalog = Catalog(world.store, world.settings)
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
    summary = _run(world, lambda ing: ing.feed(lines), viewers=counter, wall=lambda: now)
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
