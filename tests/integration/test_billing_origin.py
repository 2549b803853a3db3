"""Billing at the origin over real HTTP, with a real publish: tokens, 401/402, signed playlists
that play in ffprobe from one URL, and exact billing of a player that switches renditions and
retries.

One server and one live stream for the module (priced channel, two renditions).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import m3u8
import pytest

from tests.conftest import ServerThread, make_settings, require_tool
from tests.integration.test_api import TOKEN, Api, Publishing, until
from tests.media import http_get
from vilokanam.billing.ledger import Ledger
from vilokanam.billing.tokens import issue

pytestmark = pytest.mark.e2e

SECRET = "billing-origin-secret-0123456789abcdef"
PRICE = 7
FEE_BPS = 1000
LADDER = [{"name": "180p", "height": 180, "video_bitrate": 250_000}]
SEGMENT = re.compile(r"s(\d+)-seg-(\d+)\.m4s")


class Live:
    def __init__(self, server: ServerThread, api: Api, keys: dict[str, str]) -> None:
        self.server = server
        self.api = api
        self.keys = keys
        self.base = f"{server.http_base}/live/paid"

    def viewer_id(self, name: str) -> int:
        return int(self.api.ok("GET", f"/viewers/{name}")["id"])

    def signed_master(self, name: str) -> str:
        return str(self.api.ok("POST", f"/viewers/{name}/playback/paid")["url"])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data: Path = tmp_path_factory.mktemp("billing-origin")
    settings = make_settings(
        data,
        api={"token": TOKEN},
        transcode={"ladder": LADDER},
        billing={"token_secret": SECRET, "flush_interval": 0.2, "platform_fee_bps": FEE_BPS},
    )
    server = ServerThread(settings).start()
    api = Api(server.http_base)
    created = api.ok("POST", "/channels", {"slug": "paid", "price_per_second": PRICE}, 201)
    keys = {}
    for name in ("alice", "bob", "carol"):
        keys[name] = api.ok("POST", "/viewers", {"name": name}, 201)["viewer_key"]
    for name in ("alice", "bob"):
        api.ok("POST", f"/viewers/{name}/deposit", {"amount": 100_000, "reference": "r1"})
    publishing = Publishing(f"{server.rtmp_base}/{created['stream_key']}", seconds=45, pace=1.0)
    probe = Live(server, api, keys)
    master = probe.signed_master("bob")
    until(lambda: http_get(master)[0] == 200, timeout=30)
    yield probe
    server.stop()
    publishing.stopped(5)


def _status(url: str) -> tuple[int, Any]:
    status, body, _ = http_get(url)
    return status, json.loads(body) if status >= 400 else body


def _ledger_fetch_events(live: Live) -> int:
    return len(live.api.ok("GET", "/ledger?channel=paid"))


def test_priced_channel_refuses_without_a_valid_token(live: Live) -> None:
    paths = ["master.m3u8", "source/index.m3u8", "180p/index.m3u8"]
    media = m3u8.loads(
        http_get(live.signed_master("bob").replace("master", "source/index"))[1].decode()
    )
    segment = media.segments[-1].uri.split("?")[0]
    paths.append(f"source/{segment}")
    alice = live.viewer_id("alice")
    carol = live.viewer_id("carol")
    cases = [
        ("", 401, "missing token"),
        ("?token=not-a-token", 401, "malformed token"),
        (f"?token={issue('another-secret-0123456789abcdef', alice, 'paid', 2**40)}", 401,
         "bad signature"),
        (f"?token={issue(SECRET, alice, 'paid', int(time.time()) - 1)}", 401, "token expired"),
        (f"?token={issue(SECRET, alice, 'other', 2**40)}", 401, "token is for another channel"),
        (f"?token={issue(SECRET, carol, 'paid', 2**40)}", 402, None),  # carol has no balance
    ]  # fmt: skip
    for query, status, reason in cases:
        for path in paths:
            got, payload = _status(f"{live.base}/{path}{query}")
            assert got == status, (path, query, payload)
            assert payload["error"] == ("unauthorized" if status == 401 else "payment_required")
            assert reason is None or payload["detail"] == reason
            if status == 402:
                assert "balance" in payload["detail"]
    live.server.call(live.server.server.billing.flush)
    assert live.api.ok("GET", "/viewers/carol/balance")["seconds_watched"] == 0
    assert live.api.ok("GET", "/ledger?viewer=carol") == []


def _uris(playlist: str) -> list[str]:
    found = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    return found + re.findall(r'URI="([^"]+)"', playlist)


def test_the_one_signed_url_plays_in_ffprobe(live: Live) -> None:
    master_url = live.signed_master("bob")
    token = master_url.split("token=", 1)[1]
    master = http_get(master_url)[1].decode()
    variants = _uris(master)
    assert len(variants) == 2 and all(uri.endswith(f"?token={token}") for uri in variants)
    for variant in variants:
        text = http_get(f"{live.base}/{variant}")[1].decode()
        nested = _uris(text)
        assert nested and all(uri.endswith(f"?token={token}") for uri in nested), text
    ffprobe = require_tool("ffprobe", "checks that a player plays the signed URL")
    result = subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "stream=codec_type,width,height",
         "-of", "json", master_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    streams = json.loads(result.stdout)["streams"]
    assert {s["codec_type"] for s in streams} >= {"video", "audio"}, streams
    assert {s.get("height") for s in streams if s["codec_type"] == "video"} >= {180, 360}


def _media(live: Live, url: str) -> dict[int, tuple[str, float]]:
    """sequence → (signed segment URL, EXTINF duration) of a signed media playlist."""
    status, body, _ = http_get(url)
    assert status == 200, url
    playlist = m3u8.loads(body.decode(), uri=url)
    found = {}
    for segment in playlist.segments:
        match = SEGMENT.search(segment.uri)
        assert match and "token=" in segment.uri
        found[int(match[2])] = (segment.absolute_uri, float(segment.duration))
    return found


def test_abr_switches_and_retries_are_billed_once_per_sequence(live: Live) -> None:
    """A player fetching N distinct sequences at real-time pace, alternating renditions, retrying
    and fetching some twice in both renditions, is billed exactly the sum of their EXTINFs."""
    api, server = live.api, live.server
    alice = live.viewer_id("alice")
    before = api.ok("GET", "/viewers/alice/balance")
    assert before["balance"] == 100_000 and before["seconds_watched"] == 0
    master_url = live.signed_master("alice")
    variants = {
        urlsplit(uri).path.split("/")[0]: uri for uri in _uris(http_get(master_url)[1].decode())
    }
    media_urls = {name: f"{live.base}/{uri}" for name, uri in variants.items()}
    names = sorted(media_urls)
    wanted = 5
    fetched: dict[int, float] = {}
    requests = 0
    started: float | None = None
    deadline = time.monotonic() + 40
    while len(fetched) < wanted:
        assert time.monotonic() < deadline, f"only {len(fetched)} sequences in time"
        name = names[len(fetched) % 2]  # alternate renditions (ABR)
        listed = _media(live, media_urls[name])
        sequence = max(listed) if not fetched else max(fetched) + 1
        content = sum(fetched.values())
        if sequence not in listed or (started and time.monotonic() - started < content + 0.3):
            time.sleep(0.1)  # real-time pace: never ahead of what was watched
            continue
        url, duration = listed[sequence]
        started = started or time.monotonic()
        for _ in range(2):  # a retry
            assert http_get(url)[0] == 200
            requests += 1
        other = names[(len(fetched) + 1) % 2]  # the same sequence in the other rendition
        other_url = url.replace(f"/{name}/", f"/{other}/")
        until(lambda u=other_url: http_get(u)[0] == 200, timeout=5, step=0.1)
        requests += 1
        fetched[sequence] = duration
    first = min(fetched)
    assert http_get(_media(live, media_urls[names[0]])[first][0])[0] == 200  # an old one again
    assert requests >= 3 * wanted

    server.call(server.server.billing.flush)
    expected = sum(round(d * 1000) for d in fetched.values()) // 1000
    assert expected >= 2 * wanted - 1  # ~2 s segments
    status = api.ok("GET", "/viewers/alice/balance")
    assert status["seconds_watched"] == expected, (status, fetched)
    assert status["spent"] == expected * PRICE and status["pending_spend"] == 0
    assert status["balance"] == 100_000 - expected * PRICE

    entries = api.ok("GET", "/ledger?viewer=alice")
    watches = [e for e in entries if e["kind"] == "watch"]
    assert sum(e["seconds"] for e in watches) == expected
    fees = 0
    for entry in watches:
        postings = {p["account"]: p["amount"] for p in entry["postings"]}
        fee = entry["amount"] * FEE_BPS // 10_000
        fees += fee
        assert entry["amount"] == entry["seconds"] * PRICE
        channel = entry["channel_id"]
        assert postings == {
            f"viewer:{alice}": -entry["amount"],
            f"creator:{channel}": entry["amount"] - fee,
            "platform": fee,
        }
    ledger = Ledger(server.store)
    assert ledger.viewer_balance(alice) == 100_000 - expected * PRICE
    assert ledger.sum_of_all_postings() == 0
    earnings = api.ok("GET", "/channels/paid/earnings")
    all_watches = [e for e in api.ok("GET", "/ledger?channel=paid") if e["kind"] == "watch"]
    assert earnings["gross"] == sum(e["amount"] for e in all_watches)
    assert earnings["gross"] - earnings["fees"] == earnings["net"]
    assert earnings["seconds"] >= expected and fees <= earnings["fees"]

    me = api("GET", "/me", token=live.keys["alice"])
    assert me[0] == 200 and me[1]["seconds_watched"] == expected


def test_the_free_preview_needs_no_balance(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """billing.free_preview=4 (set on the running server's tracker: one server per module), a
    viewer with no balance: the first 4 s of the session's segments are served, then 402."""
    billing = live.server.server.billing
    monkeypatch.setattr(billing.tracker, "preview_ms", 4000)
    live.api.ok("POST", "/viewers", {"name": "dave"}, 201)
    dave = live.viewer_id("dave")
    query = f"?token={issue(SECRET, dave, 'paid', 2**40)}"
    assert http_get(f"{live.base}/master.m3u8{query}")[0] == 200
    listed = _media(live, f"{live.base}/source/index.m3u8{query}")
    sequences = sorted(listed)[-4:]
    assert len(sequences) == 4, listed
    expected, fetched_ms = 0, 0  # served while what was fetched is short of the preview
    for sequence in sequences:
        if fetched_ms >= 4000:
            break
        fetched_ms += round(listed[sequence][1] * 1000)
        expected += 1
    assert 2 <= expected <= 3  # ~2 s segments
    statuses = [http_get(listed[sequence][0])[0] for sequence in sequences]
    assert statuses == [200] * expected + [402] * (len(sequences) - expected), listed
    for path in ("master.m3u8", "source/index.m3u8"):  # the preview is used up: all refused
        got, payload = _status(f"{live.base}/{path}{query}")
        assert got == 402 and "balance" in payload["detail"], path
    live.server.call(billing.flush)
    status = live.api.ok("GET", "/viewers/dave/balance")
    assert status["balance"] == 0 and status["spent"] == 0
    assert live.api.ok("GET", "/ledger?viewer=dave") == []


def test_a_free_channel_needs_no_token(live: Live) -> None:
    live.api.ok("PATCH", "/channels/paid", {"price_per_second": 0})  # applies at once
    status, body, _ = http_get(f"{live.base}/master.m3u8")
    assert status == 200 and b"token=" not in body
    media = http_get(f"{live.base}/source/index.m3u8")[1].decode()
    segment = [line for line in media.splitlines() if line.endswith(".m4s")][-1]
    assert http_get(f"{live.base}/source/{segment}")[0] == 200
