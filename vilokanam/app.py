"""Wires the parts into one running server: store, stream manager, RTMP ingest, HTTP origin."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from vilokanam.billing.service import BillingService
from vilokanam.billing.settlement.settler import Settler
from vilokanam.billing.tokens import load_or_create_secret
from vilokanam.config import Settings
from vilokanam.config.urls import urls_for
from vilokanam.hooks.dispatcher import WebhookDispatcher
from vilokanam.hooks.events import WebhookEvents
from vilokanam.hooks.publish_auth import HttpPublishAuthorizer
from vilokanam.ingest.server import RtmpServer
from vilokanam.ingest.streams import StreamManager
from vilokanam.origin.api import setup_api
from vilokanam.origin.api.token import load_or_create_token, token_path
from vilokanam.origin.gate import BillingGate, ChannelCache, SegmentDurations, channel_lookup
from vilokanam.origin.http import create_app
from vilokanam.origin.metrics import ServerMetrics
from vilokanam.origin.storage import LocalStorage, Storage
from vilokanam.origin.sweep import EndedStreamSweeper, uncatalogued_recordings
from vilokanam.origin.viewers import TRUSTED_PROXIES, ViewerCounter, feed_viewer_counts
from vilokanam.origin.vod import RetentionTask, VodCatalogue
from vilokanam.packager.recovery import recover_sessions
from vilokanam.store import Store

log = logging.getLogger("vilokanam")

DEMO_SLUG = "demo"


def create_storage(settings: Settings) -> Storage:
    """The media backend ``storage`` names (boto3 is imported only for S3)."""
    if settings.storage == "s3":
        from vilokanam.origin.s3 import S3Storage

        storage = S3Storage(settings.media_dir, settings.s3)
        storage.expected_segment_seconds = settings.hls.segment_duration  # slow-upload warning
        return storage
    return LocalStorage(settings.media_dir)


class VilokanamServer:
    """The whole server in one process (workers are child processes)."""

    def __init__(self, settings: Settings, *, echo: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.echo = echo
        self.store = Store(settings.database_url)
        self.storage = create_storage(settings)
        self.webhooks = WebhookDispatcher(settings, self.store)
        self.webhook_events = WebhookEvents(
            self.webhooks, playback_url=lambda slug: self.urls.playback(slug)
        )
        self.publish_hook = HttpPublishAuthorizer(settings) if settings.publish_hook.url else None
        self.manager = StreamManager(
            settings,
            self.store,
            self.storage,
            events=self.webhook_events,
            authorize=self.publish_hook,
        )
        self.viewers = ViewerCounter(settings.http.viewer_timeout)
        self.vods = VodCatalogue(self.store, self.storage)
        self.retention = RetentionTask(self.vods)
        self.sweeper = EndedStreamSweeper(
            self.store,
            self.storage,
            settings.hls.keep_ended,
            in_use=lambda: [stream.prefix for stream in self.manager.streams.values()],
        )
        self.billing = BillingService(self.store, settings)
        self.settler = Settler(settings, self.store)
        self.deposit_watcher: Any = None
        if settings.billing.settlement == "substrate":  # substrate-interface loads only here
            from vilokanam.billing.settlement.watcher import DepositWatcher

            self.deposit_watcher = DepositWatcher(  # a credit re-reads the viewer's balance
                settings, self.store, on_credit=self.billing.invalidate
            )
        self.gate: BillingGate | None = None
        self.metrics = ServerMetrics(self.manager, self.viewers)
        self.metrics.track_webhook_deliveries(
            lambda: {
                "delivered": self.webhooks.delivered,
                "retried": self.webhooks.retried,
                "failed": self.webhooks.failed,
            }
        )
        self._viewer_task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        """Ending the playlists of streams a crash left open (see packager.recovery)."""
        self.rtmp = RtmpServer(settings, self.manager)
        self.runner: web.AppRunner | None = None
        self.http_port = settings.http.port

    async def start(self) -> None:
        if self.store.applied_migrations:
            log.info("database migrated: %s", ", ".join(self.store.applied_migrations))
        abandoned = await asyncio.to_thread(self.store.end_unfinished_sessions)
        if abandoned:
            log.info("ended %d stream session(s) left open by an earlier run", len(abandoned))
        root = self.storage.root
        uncatalogued = await asyncio.to_thread(uncatalogued_recordings, self.store, root)
        await self.storage.start()
        save_recovered = functools.partial(self.vods.save_recovered, settings=self.settings)
        if recover := sorted(set(abandoned) | set(uncatalogued)):
            # in the background: an unreachable S3 must not hold the start
            self._recovery = asyncio.create_task(
                recover_sessions(self.storage, recover, save_recovered)
            )
        await self.webhooks.start()
        await self.billing.start()
        await self.settler.start()
        if self.deposit_watcher is not None:
            await self.deposit_watcher.start()
        secret = await asyncio.to_thread(load_or_create_secret, self.settings)
        self.gate = BillingGate(
            self.billing,
            ChannelCache(channel_lookup(self.store)),
            secret,
            SegmentDurations(self.manager),
            media_prefix=self.manager.media_prefix,  # a playlist's session, for the preview
        )
        await self.rtmp.start()
        app = create_app(
            self.settings,
            self.storage.root,
            self.manager.media_prefix,
            metrics=self.metrics,
            viewers=self.viewers,
            gate=self.gate,
            resolve_vod=self.vods.resolve,
            public_url=self.storage.public_url,
        )
        if self.settings.api.enabled:
            setup_api(
                app,
                store=self.store,
                settings=self.settings,
                manager=self.manager,
                urls_provider=lambda: self.urls,
                token=await asyncio.to_thread(load_or_create_token, self.settings),
                billing=self.billing,
                token_secret=secret,
                settler=self.settler,
                channel_changed=self.gate.channels.forget,
                vods=self.vods,
            )
        self._viewer_task = asyncio.create_task(
            feed_viewer_counts(self.viewers, self.manager.live_streams)
        )
        self.retention.start()
        self.sweeper.start(after=self._recovery)  # recovery first: it publishes those folders
        app[TRUSTED_PROXIES] = tuple(
            ipaddress.ip_network(item, strict=False) for item in self.settings.http.trusted_proxies
        )
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        if self.settings.http.port == 0 and site._server is not None:  # tests: ephemeral port
            self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.urls = urls_for(self.settings, self.rtmp.port, self.http_port)
        await self._first_start_banner()
        if self.settings.api.enabled:
            where = "api.token" if self.settings.api.token else str(token_path(self.settings))
            self.echo(f"Operator API: {self.urls.http_base}/api/v1 (bearer token in {where})")
        log.info(
            "listening: rtmp %s, http %s (data in %s)",
            self.urls.rtmp_server,
            self.urls.http_base,
            self.settings.data_dir.resolve(),
        )

    async def _first_start_banner(self) -> None:
        """On a first start, make a demo channel and say once where to publish and watch."""
        channels = await asyncio.to_thread(self.store.list_channels)
        if channels:
            lines = [f"Publish with OBS/ffmpeg to {self.urls.rtmp_server} using a channel's key."]
            lines += [f"  Watch {c.slug}: {self.urls.playback(c.slug)}" for c in channels[:10]]
            self.echo("\n".join(lines))
            return
        channel, key = await asyncio.to_thread(self.store.create_channel, DEMO_SLUG, "Demo")
        self.echo(
            "\n".join(
                [
                    "",
                    "Vilokanam is running. A 'demo' channel was created (shown once; "
                    "`vilokanam channel rotate-key demo` makes a new key):",
                    "  OBS > Settings > Stream > Service: Custom   "
                    f"Server: {self.urls.rtmp_server}",
                    f"  Stream key: {key}",
                    f"  or: ffmpeg -re -i INPUT -c:v libx264 -g 60 -c:a aac -f flv "
                    f"{self.urls.rtmp_publish(key)}",
                    f"  Watch: {self.urls.playback(channel.slug)}",
                    f"  In a browser: {self.urls.watch_page(channel.slug)}",
                    "",
                ]
            )
        )

    async def stop(self) -> None:
        await self.sweeper.stop()  # before the recovery it waits for is cancelled
        for task in (self._viewer_task, self._recovery):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.rtmp.stop()
        await self.manager.shutdown()
        await self.retention.stop()
        await self.storage.close(self.settings.s3.shutdown_grace)  # uploads still queued
        await self.webhooks.stop(flush_timeout=2.0)  # stream.ended of the streams just ended
        if self.publish_hook is not None:
            await self.publish_hook.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.billing.stop()  # after the origin: the last fetches reach the ledger
        if self.deposit_watcher is not None:
            await self.deposit_watcher.stop()
        await self.settler.stop()


async def serve_forever(settings: Settings) -> None:
    # Handlers first: a SIGTERM while starting still shuts down cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = VilokanamServer(settings)
    await server.start()
    await stop.wait()
    log.info("shutting down: ending live streams")
    await server.stop()
