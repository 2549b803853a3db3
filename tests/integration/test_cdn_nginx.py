"""nginx as the CDN (docs/cdn.md): a player plays through the cache, a second viewer gets the
cached segments the origin never sees, and `vilokanam billing ingest-logs` bills that viewer
exactly from nginx's real access log — once, however often it is read.

A real server with a priced channel, a real ffmpeg publish, a real nginx (tests/nginx.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import m3u8
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.conftest import require_tool
from tests.integration.test_api import TOKEN, Api, until
from tests.media import ffmpeg_publish_command, http_get
from tests.nginx import Nginx, start_nginx  # noqa: F401 - the fixture (also a conftest plugin)
from vilokanam.billing.ledger import Ledger
from vilokanam.cli.main import app

pytestmark = pytest.mark.e2e

SECRET = "cdn-nginx-test-secret-0123456789abcdef"
PRICE = 7
DEPOSIT = 100_000
LADDER = [{"name": "180p", "height": 180, "video_bitrate": 250_000}]
SEGMENT = re.compile(r"s(\d+)-seg-(\d+)\.m4s")
WANTED = 4


def _media(url: str) -> dict[int, tuple[str, float]]:
    """sequence → (segment path without query, EXTINF) of a signed media playlist."""
    status, body, _ = http_get(url)
    assert status == 200, (url, status, body[:200])
    found = {}
    for segment in m3u8.loads(body.decode()).segments:
        match = SEGMENT.search(segment.uri)
        assert match and "token=" in segment.uri, segment.uri
        found[int(match[2])] = (segment.uri.split("?")[0], float(segment.duration))
    return found


def _ingest(server: Any, *paths: Path) -> dict[str, Any]:
    args = ["billing", "ingest-logs", *map(str, paths), "--server", server.http_base]
    result = CliRunner().invoke(app, [*args, "--token", TOKEN, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _viewers_metric(server: Any) -> float:
    text = http_get(f"{server.http_base}/metrics")[1].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vilokanam_viewers" and sample.labels.get("channel") == "paid":
                return sample.value
    return 0.0


def test_a_viewer_served_from_the_nginx_cache_is_billed_from_its_access_log(
    start_server: Any,
    start_nginx: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    ffmpeg = require_tool("ffmpeg", "publishes the test stream")
    ffprobe = require_tool("ffprobe", "plays the stream through nginx")
    server = start_server(
        api={"token": TOKEN},
        transcode={"ladder": LADDER},
        billing={"token_secret": SECRET, "flush_interval": 0.2},
    )
    api = Api(server.http_base)
    key = api.ok("POST", "/channels", {"slug": "paid", "price_per_second": PRICE}, 201)
    ids = {}
    for name in ("ann", "ben"):
        ids[name] = api.ok("POST", "/viewers", {"name": name}, 201)["id"]
        api.ok("POST", f"/viewers/{name}/deposit", {"amount": DEPOSIT, "reference": "r"})
    api.ok("POST", "/viewers", {"name": "cy"}, 201)  # no balance
    publisher = subprocess.Popen(
        ffmpeg_publish_command(ffmpeg, f"{server.rtmp_base}/{key['stream_key']}", seconds=50,
                               readrate=1.0),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        nginx: Nginx = start_nginx(f"127.0.0.1:{server.settings.http.port}")
        tokens = {name: api.ok("POST", f"/viewers/{name}/playback/paid")["token"] for name in ids}
        base = f"{nginx.base}/live/paid"
        media = {name: f"{base}/source/index.m3u8?token={token}" for name, token in tokens.items()}
        until(lambda: http_get(media["ann"])[0] == 200 and len(_media(media["ann"])) >= 2, 30)

        # ann's player plays the one signed URL through nginx
        probe = subprocess.run(
            [ffprobe, "-v", "error", "-show_entries", "stream=codec_type,height", "-of", "json",
             f"{base}/master.m3u8?token={tokens['ann']}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        kinds = {stream["codec_type"] for stream in json.loads(probe.stdout)["streams"]}
        assert kinds >= {"video", "audio"}

        # then fetches at real-time pace; ben fetches each segment right after ann: from cache
        fetched: dict[int, float] = {}
        started = 0.0
        deadline = time.monotonic() + 40
        while len(fetched) < WANTED:
            assert time.monotonic() < deadline, f"only {len(fetched)} segments in time"
            listed = _media(media["ann"])
            _media(media["ben"])  # ben's player polls too
            sequence = max(listed) if not fetched else max(fetched) + 1
            if sequence not in listed or (
                started and time.monotonic() - started < sum(fetched.values()) + 0.3
            ):
                time.sleep(0.1)
                continue
            path, duration = listed[sequence]
            status, _, headers = http_get(f"{base}/source/{path}?token={tokens['ann']}")
            assert status == 200 and headers["X-Cache-Status"] in ("MISS", "HIT"), headers
            status, _, headers = http_get(f"{base}/source/{path}?token={tokens['ben']}")
            assert status == 200 and headers["X-Cache-Status"] == "HIT", headers
            started = started or time.monotonic()
            fetched[sequence] = duration

        # a cached paid segment still needs a valid token, and a balance
        cached = f"{base}/source/{listed[max(fetched)][0]}"
        assert http_get(cached)[0] == 401
        assert http_get(f"{cached}?token=forged")[0] == 401
        broke = api.ok("POST", "/viewers/cy/playback/paid")["token"]
        status, body, _ = http_get(f"{cached}?token={broke}")
        assert status == 402 and json.loads(body)["error"] == "payment_required", body

        billing = server.server.billing
        session = int(SEGMENT.search(listed[max(fetched)][0])[1])  # type: ignore[index]
        server.call(billing.flush)
        assert api.ok("GET", "/viewers/ben/balance")["seconds_watched"] == 0, "origin saw ben"
        ann_before = billing.tracker.state(ids["ann"], session)
        assert ann_before is not None and ann_before.sequences

        # the origin's viewer counts forget everyone; the log alone brings both back
        server.server.viewers._seen.clear()
        server.server.viewers._earlier.clear()
        report = _ingest(server, nginx.access_log)
        (file,) = report["files"]
        assert file["format"] == "nginx-json" and file["bad_lines"] == 0
        assert set(file["skipped"]) == {"status 4xx"}, file  # 404 before live, 401s, 402
        until(lambda: _viewers_metric(server) == 2, 5)

        server.call(billing.flush)
        expected = sum(round(duration * 1000) for duration in fetched.values()) // 1000
        assert expected >= 2 * WANTED - 1  # ~2 s segments
        ben = api.ok("GET", "/viewers/ben/balance")
        assert ben["seconds_watched"] == expected, (ben, fetched)
        assert ben["balance"] == DEPOSIT - expected * PRICE and ben["pending_spend"] == 0
        ann_after = billing.tracker.state(ids["ann"], session)
        assert ann_after is not None
        assert ann_after.sequences == ann_before.sequences, "the log added nothing for ann"
        assert ann_after.content_ms + ann_after.pending_ms == (
            ann_before.content_ms + ann_before.pending_ms
        )
        ann = api.ok("GET", "/viewers/ann/balance")
        assert ann["seconds_watched"] == ann_after.content_ms // 1000, "billed once"

        # read again, the combined log, a copy of the log: nothing changes
        ledger = Ledger(server.store)
        balances = {name: ledger.viewer_balance(viewer) for name, viewer in ids.items()}
        again = _ingest(server, nginx.access_log)
        assert again["files"][0]["note"] == "nothing new" and again["total"]["lines"] == 0
        copy = tmp_path / "copy.json.log"
        copy.write_text('{"not": "a request"}\n' + nginx.access_log.read_text())
        shutil.copy(nginx.combined_log, tmp_path / "combined.log")
        replay = _ingest(server, copy, tmp_path / "combined.log")
        totals = {f["format"]: f for f in replay["files"]}
        assert totals["nginx"]["segments"] == file["segments"] and totals["nginx"]["bad_lines"] == 0
        assert totals["nginx-json"]["billed"] == file["billed"] > 2 * WANTED
        assert replay["total"]["ticks"] == 0
        server.call(billing.flush)
        assert {name: ledger.viewer_balance(viewer) for name, viewer in ids.items()} == balances
        assert ledger.sum_of_all_postings() == 0
    finally:
        publisher.kill()
        publisher.wait(10)
