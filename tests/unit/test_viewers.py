"""Viewer counting: a sliding window of distinct clients per channel, noted by the origin."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from unittest import mock

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from vilokanam.config import load_settings
from vilokanam.origin.http import create_app
from vilokanam.origin.metrics import ServerMetrics
from vilokanam.origin.viewers import (
    TRUSTED_PROXIES,
    ViewerCounter,
    client_address,
    identity,
    viewer_identity,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_viewers_expire_after_the_timeout() -> None:
    clock = FakeClock()
    counter = ViewerCounter(30, clock=clock)
    for i in range(10_000):
        counter.note("demo", i.to_bytes(8, "big"))
        clock.now += 0.001  # the last viewer is seen 10 s after the first
    counter.note("other", b"x")
    assert counter.count("demo") == 10_000 and counter.count("other") == 1
    clock.now += 25  # the first 5 s of viewers are now older than 30 s
    assert 4_990 <= counter.count("demo") <= 5_010
    counter.note("demo", (9_999).to_bytes(8, "big"))  # seen again: stays
    clock.now += 20
    assert counter.count("demo") == 1
    assert counter.count("other") == 0
    counter.expire()
    assert counter.channels() == ["demo"]
    clock.now += 31
    counter.expire()
    assert counter.channels() == [] and counter.count("demo") == 0


def test_refetching_does_not_double_count_and_refreshes() -> None:
    clock = FakeClock()
    counter = ViewerCounter(30, clock=clock)
    for _ in range(5):
        counter.note("demo", b"a")
        counter.note("demo", b"b")
        clock.now += 10
    assert counter.count("demo") == 2  # both seen 10 s ago
    counter.note("demo", b"a")
    clock.now += 25
    assert counter.count("demo") == 1


def test_identity_is_address_and_user_agent() -> None:
    def identity(agent: str) -> bytes:
        request = make_mocked_request("GET", "/live/demo/master.m3u8", {"User-Agent": agent})
        return viewer_identity(request)

    assert identity("player A") == identity("player A")
    assert identity("player A") != identity("player B")


async def test_origin_notes_viewers_and_counts_requests_by_route(tmp_path: Path) -> None:
    stream = tmp_path / "streams" / "7" / "source"
    stream.mkdir(parents=True)
    (stream / "index.m3u8").write_text("#EXTM3U\n")
    (stream / "seg-1.m4s").write_bytes(b"\x00" * 100)
    viewers = ViewerCounter(30)
    metrics = ServerMetrics()
    app = create_app(
        load_settings(environ={}),
        tmp_path,
        {"demo": "streams/7"}.get,
        metrics=metrics,
        viewers=viewers,
    )
    async with TestClient(TestServer(app)) as client:
        for agent in ("A", "B", "A"):
            for path in ("source/index.m3u8", "source/seg-1.m4s"):
                response = await client.get(f"/live/demo/{path}", headers={"User-Agent": agent})
                assert response.status == 200
        assert (await client.get("/live/demo/source/seg-9.m4s")).status == 404
        assert (await client.get("/nowhere/at/all")).status == 404
        assert viewers.count("demo") == 2, "a 404 is not a viewer"
        response = await client.get("/metrics")
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    samples = {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "vilokanam_http_requests"
        for s in family.samples
        if s.name == "vilokanam_http_requests_total"
    }
    assert samples == {("/live/{slug}/{path}", "200"): 6, ("/live/{slug}/{path}", "404"): 1,
                       ("unmatched", "404"): 1}  # fmt: skip


def test_a_trusted_proxy_names_the_client_so_origin_and_cache_log_agree() -> None:
    app = web.Application()
    app[TRUSTED_PROXIES] = (ipaddress.ip_network("10.0.0.0/8"),)

    def address(peer: str, forwarded: str | None) -> str:
        headers = {"User-Agent": "hls.js"}
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        transport = mock.Mock()
        transport.get_extra_info.return_value = (peer, 40000)
        request = make_mocked_request("GET", "/live/x/master.m3u8", headers, app=app,
                                      transport=transport)  # fmt: skip
        return client_address(request)

    assert address("10.1.1.1", "203.0.113.7") == "203.0.113.7", "the cache's client"
    assert address("10.1.1.1", "198.51.100.2, 203.0.113.7, 10.2.2.2") == "203.0.113.7", (
        "the nearest untrusted hop: earlier entries are the client's to forge"
    )
    assert address("10.1.1.1", None) == "10.1.1.1"
    assert address("192.0.2.9", "203.0.113.7") == "192.0.2.9", "only trusted peers relay"
    assert address("10.1.1.1", "not-an-ip, 10.3.3.3") == "not-an-ip"
    request = make_mocked_request("GET", "/", {"User-Agent": "hls.js"})
    assert viewer_identity(request) == identity(request.remote or "", "hls.js")
