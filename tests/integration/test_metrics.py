"""``/metrics`` while a real stream is live: parsed with prometheus-client's own parser."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

import m3u8
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.media import TEST_LADDER, Published, publish_pyav
from vilokanam.store import SessionState

pytestmark = pytest.mark.e2e

SLUG = "metered"
VIEWERS = ("viewer-one/1.0", "viewer-two/2.0")
LIVE_ROUTE = "/live/{slug}/{path}"


def get(url: str, agent: str = "metrics-test") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": agent})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Scrape:
    """One parsed /metrics response: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def value(self, name: str, **labels: str) -> float | None:
        for sample_labels, value in self.samples.get(name, []):
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        return None

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        return {
            sample_labels[label]: value
            for sample_labels, value in self.samples.get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
        }


def scrape(server: Any) -> Scrape:
    status, body = get(f"{server.http_base}/metrics")
    assert status == 200
    return Scrape(body.decode())


def watch(server: Any, agent: str) -> int:
    """Fetch the master, every media playlist and its newest segment, as one viewer."""
    base = f"{server.http_base}/live/{SLUG}/"
    status, body = get(base + "master.m3u8", agent)
    assert status == 200
    fetched = 1
    for variant in m3u8.loads(body.decode(), uri=base).playlists:
        status, text = get(base + variant.uri, agent)
        assert status == 200
        playlist = m3u8.loads(text.decode(), uri=base + variant.uri)
        status, _ = get(playlist.segments[-1].absolute_uri, agent)
        assert status == 200
        fetched += 2
    return fetched


def test_metrics_describe_the_live_stream(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(transcode={"ladder": TEST_LADDER})
    key = server.create_channel(SLUG)
    published: list[Published] = []
    publisher = threading.Thread(
        target=lambda: published.append(
            publish_pyav(f"{server.rtmp_base}/{key}", seconds=16, pace=1.0)
        )
    )
    publisher.start()
    try:
        deadline = time.monotonic() + 15
        while get(f"{server.http_base}/live/{SLUG}/master.m3u8", VIEWERS[0])[0] != 200:
            assert time.monotonic() < deadline, "no master playlist"
            time.sleep(0.1)
        live_fetches = 1 + sum(watch(server, agent) for agent in VIEWERS)
        assert get(f"{server.http_base}/live/{SLUG}/nothing.m3u8", VIEWERS[0])[0] == 404
        assert get(f"{server.http_base}/no/such/route")[0] == 404

        # The worker reports every 5 s: wait for its first figures (the stream is still live).
        while True:
            metrics = scrape(server)
            if len(metrics.by("vilokanam_transcode_fps", "rendition", channel=SLUG)) == 3:
                break
            assert time.monotonic() < deadline, "no transcode stats while publishing"
            time.sleep(0.5)
        assert publisher.is_alive(), "the scrape must happen while publishing"
    finally:
        publisher.join(120)

    assert metrics.value("vilokanam_live_streams") == 1
    assert metrics.value("vilokanam_publishers") == 1
    assert metrics.value("vilokanam_viewers", channel=SLUG) == 2
    assert metrics.value("vilokanam_stream_uptime_seconds", channel=SLUG) > 2  # type: ignore[operator]
    assert metrics.value("vilokanam_dropped_frames_total", channel=SLUG) == 0
    assert metrics.value("vilokanam_ingest_bytes_total", channel=SLUG) > 100_000  # type: ignore[operator]

    ingest = metrics.value("vilokanam_ingest_bitrate_bits_per_second", channel=SLUG)
    video_bps = sum(map(len, published[0].video_packets)) * 8 / 16
    assert ingest is not None and 0.5 * video_bps < ingest < 2 * video_bps + 400_000

    fps = metrics.by("vilokanam_transcode_fps", "rendition", channel=SLUG)
    speed = metrics.by("vilokanam_transcode_speed_ratio", "rendition", channel=SLUG)
    assert set(fps) == set(speed) == {"source", "240p", "180p"}
    assert all(value > 5 for value in fps.values()), fps  # 25 fps source, paced in real time
    assert all(0.3 < value < 3 for value in speed.values()), speed
    bandwidth = metrics.by("vilokanam_rendition_bandwidth_bits_per_second", "rendition")
    assert set(bandwidth) == set(fps) and all(value > 0 for value in bandwidth.values())

    requests = metrics.families["vilokanam_http_requests"]
    assert requests.type == "counter"
    routes = {(s.labels["route"], s.labels["status"]): s.value for s in requests.samples
              if s.name.endswith("_total")}  # fmt: skip
    assert routes[(LIVE_ROUTE, "200")] >= live_fetches
    assert routes[(LIVE_ROUTE, "404")] >= 1  # the master before it exists, nothing.m3u8
    assert routes[("unmatched", "404")] == 1
    assert routes[("/metrics", "200")] >= 1
    assert all(route in (LIVE_ROUTE, "unmatched", "/metrics") for route, _ in routes)
    assert metrics.value("vilokanam_http_request_duration_seconds_count", route=LIVE_ROUTE) > 0  # type: ignore[operator]

    assert metrics.families["vilokanam_segment_latency_seconds"].type == "histogram"
    count = metrics.value("vilokanam_segment_latency_seconds_count", channel=SLUG)
    total = metrics.value("vilokanam_segment_latency_seconds_sum", channel=SLUG)
    assert count is not None and total is not None and count >= 1
    assert 0 <= total / count < 5, "listed within seconds of its last frame being due"
    inf = metrics.value("vilokanam_segment_latency_seconds_bucket", channel=SLUG, le="+Inf")
    assert inf == count

    deadline = time.monotonic() + 20  # reconnect window (2 s), then the session ends
    while (after := scrape(server)).value("vilokanam_live_streams") != 0:
        assert time.monotonic() < deadline, "the stream did not end"
        time.sleep(0.2)
    assert after.by("vilokanam_viewers", "channel") == {}, "no series for ended streams"
    while (sessions := server.store.sessions())[0].state != SessionState.ENDED:
        assert time.monotonic() < deadline, "the session was not recorded as ended"
        time.sleep(0.2)
    assert len(sessions) == 1
    assert sessions[0].peak_viewers == 2
