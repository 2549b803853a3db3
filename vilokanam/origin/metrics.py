"""Prometheus metrics of one server: ``GET /metrics`` in the text exposition format.

Each server owns its :class:`CollectorRegistry` (several servers may share a process in tests).
HTTP figures are recorded by a middleware as requests finish; stream figures are read from the
stream manager at scrape time, so a channel's series exist exactly while it is live.
``/metrics`` has no authentication, like any Prometheus exporter: operators should keep it off
the public internet (firewall, or a reverse proxy that does not forward it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from vilokanam.ingest.streams import StreamManager
    from vilokanam.origin.viewers import ViewerCounter

UNMATCHED = "unmatched"
"""``route`` label of requests no route matched (404/405): raw paths would explode cardinality."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StreamCollector(Collector):
    """Live streams, publishers and per-channel/per-rendition figures, read at scrape time."""

    def __init__(self, manager: StreamManager, viewers: ViewerCounter | None = None) -> None:
        self.manager = manager
        self.viewers = viewers

    def collect(self) -> Iterator[Metric]:
        streams = self.manager.live_streams()
        yield GaugeMetricFamily(
            "vilokanam_live_streams",
            "Streams publishing or waiting for their publisher to reconnect.",
            value=len(streams),
        )
        yield GaugeMetricFamily(
            "vilokanam_publishers",
            "RTMP connections currently publishing.",
            value=sum(stream.publisher is not None for stream in streams),
        )
        channel = ["channel"]
        rendition = ["channel", "rendition"]
        bitrate = GaugeMetricFamily(
            "vilokanam_ingest_bitrate_bits_per_second",
            "Bits per second received from the publisher over the last 5 s.",
            labels=channel,
        )
        ingested = CounterMetricFamily(
            "vilokanam_ingest_bytes",
            "RTMP media and data bytes received in this stream session.",
            labels=channel,
        )
        viewers = GaugeMetricFamily(
            "vilokanam_viewers",
            "Distinct clients that fetched a playlist or segment within http.viewer_timeout.",
            labels=channel,
        )
        uptime = GaugeMetricFamily(
            "vilokanam_stream_uptime_seconds",
            "Seconds since the stream session started.",
            labels=channel,
        )
        dropped = CounterMetricFamily(
            "vilokanam_dropped_frames",
            "Video frames dropped by ingest in this session (waiting for a keyframe).",
            labels=channel,
        )
        fps = GaugeMetricFamily(
            "vilokanam_transcode_fps",
            "Frames per second produced per rendition (source: packets passed through).",
            labels=rendition,
        )
        speed = GaugeMetricFamily(
            "vilokanam_transcode_speed_ratio",
            "Media seconds produced per wall-clock second per rendition (1.0 = real time).",
            labels=rendition,
        )
        bandwidth = GaugeMetricFamily(
            "vilokanam_rendition_bandwidth_bits_per_second",
            "Announced peak bandwidth of each rendition (the master playlist's BANDWIDTH).",
            labels=rendition,
        )
        latency = HistogramMetricFamily(
            "vilokanam_segment_latency_seconds",
            "Seconds from when a segment's last media was due in real time (the end of its "
            "PROGRAM-DATE-TIME range: epoch wall start + media end - media start) until every "
            "playlist lists it; includes transcoding and packaging. A publisher ahead of real "
            "time counts as 0.",
            labels=channel,
        )
        seen: set[str] = set()
        for stream in streams:
            slug = stream.channel.slug
            if slug in seen:
                continue  # one series per channel, even if a session overlaps its successor
            seen.add(slug)
            stats = stream.stats
            bitrate.add_metric([slug], stats.ingest.per_second() * 8)
            ingested.add_metric([slug], stats.ingest.total)
            count = self.viewers.count(slug) if self.viewers is not None else stats.viewers
            viewers.add_metric([slug], count)
            uptime.add_metric([slug], stats.uptime)
            dropped.add_metric([slug], stats.dropped_frames)
            for name, figures in (stats.transcode.get("rungs") or {}).items():
                fps.add_metric([slug, name], float(figures.get("fps") or 0))
                speed.add_metric([slug, name], float(figures.get("speed") or 0))
            for name, info in stats.renditions.items():
                bandwidth.add_metric([slug, name], float(info.get("bandwidth") or 0))
            dist = stats.segment_latency
            buckets, running = [], 0
            for bound, n in zip((*dist.bounds, float("inf")), dist.counts, strict=True):
                running += n
                buckets.append((_le(bound), running))
            latency.add_metric([slug], buckets, dist.sum)
        yield from (bitrate, ingested, viewers, uptime, dropped, fps, speed, bandwidth, latency)


STORAGE_FIGURES = (
    "uploads_ok",
    "upload_retries",
    "uploads_dropped",
    "deletes",
    "spool_bytes",
    "spool_files",
    "upload_seconds_avg",
    "slow_uploads",
)
"""What a remote storage backend (S3) exposes; local storage has none of it."""


class StorageCollector(Collector):
    """Uploads to remote storage (S3), read at scrape time from the backend's own counters."""

    def __init__(self, storage: object) -> None:
        self.storage = storage

    def collect(self) -> Iterator[Metric]:
        s: Any = self.storage
        yield CounterMetricFamily(
            "vilokanam_storage_uploads",
            "Segments (and init segments, thumbnails) uploaded to remote storage.",
            value=s.uploads_ok,
        )
        yield CounterMetricFamily(
            "vilokanam_storage_upload_retries",
            "Failed remote puts that were retried (segments and playlists).",
            value=s.upload_retries,
        )
        yield CounterMetricFamily(
            "vilokanam_storage_dropped",
            "Segments given up because the upload spool was full (remote storage down).",
            value=s.uploads_dropped,
        )
        yield CounterMetricFamily(
            "vilokanam_storage_deletes",
            "Objects deleted from remote storage.",
            value=s.deletes,
        )
        yield GaugeMetricFamily(
            "vilokanam_storage_spool_bytes",
            "Bytes of segments on local disk waiting for their upload.",
            value=s.spool_bytes,
        )
        yield GaugeMetricFamily(
            "vilokanam_storage_spool_files",
            "Segments on local disk waiting for their upload.",
            value=s.spool_files,
        )
        yield GaugeMetricFamily(
            "vilokanam_storage_upload_seconds_avg",
            "Moving average of the seconds one segment upload takes.",
            value=s.upload_seconds_avg,
        )
        yield GaugeMetricFamily(
            "vilokanam_storage_upload_slow",
            "1 while uploads take over 90% of a segment's duration (players fall behind).",
            value=float(bool(s.slow_uploads)),
        )


class WebhookCollector(Collector):
    """``vilokanam_webhook_deliveries_total{outcome}`` from a callable returning counts."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "vilokanam_webhook_deliveries",
            "Webhook delivery attempts by outcome.",
            labels=["outcome"],
        )
        for outcome, count in sorted(self.counts().items()):
            family.add_metric([outcome], count)
        yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class ServerMetrics:
    """The registry of one server and the HTTP request instruments."""

    def __init__(
        self, manager: StreamManager | None = None, viewers: ViewerCounter | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "vilokanam_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "vilokanam_http_request_duration_seconds",
            "Seconds to produce a response's headers (file bodies are sent afterwards).",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        if manager is not None:
            self.registry.register(StreamCollector(manager, viewers))
            storage = getattr(manager, "storage", None)
            if all(hasattr(storage, name) for name in STORAGE_FIGURES):
                self.registry.register(StorageCollector(storage))

    def track_webhook_deliveries(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Expose webhook outcomes (``{"delivered": 3, "failed": 1}``) read at scrape time."""
        self.registry.register(WebhookCollector(counts))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        requests = self._request_children.get(key)
        if requests is None:
            label = method if method in METHODS else "other"
            requests = self._request_children[key] = self._requests.labels(
                route, label, str(status)
            )
        requests.inc()
        duration = self._duration_children.get(route)
        if duration is None:
            duration = self._duration_children[route] = self._duration.labels(route)
        duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", ServerMetrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def route_template(request: web.Request) -> str:
    """The matched route's template (``/live/{slug}/{path}``), or ``unmatched``."""
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


def metrics_middleware(metrics: ServerMetrics) -> Middleware:
    """Count each request by route template and status, and time it (the outermost middleware)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500  # an unexpected exception becomes a 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.observe_request(
                route_template(request), request.method, status, time.perf_counter() - started
            )

    return middleware


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    response = web.Response(body=body, headers={"Cache-Control": "no-cache"})
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
