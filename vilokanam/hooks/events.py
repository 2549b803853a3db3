"""Stream lifecycle → webhook events (the :class:`~vilokanam.ingest.streams.StreamEvents` hooks).

Every method builds the payload and hands it to the dispatcher, which queues it in the
background: they return at once and never fail the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from vilokanam.hooks.dispatcher import WebhookDispatcher
from vilokanam.store import Channel
from vilokanam.store.models import utcnow

if TYPE_CHECKING:
    from vilokanam.ingest.streams import LiveStream

log = logging.getLogger(__name__)

STREAM_STARTED = "stream.started"
STREAM_ENDED = "stream.ended"
PUBLISH_REJECTED = "stream.publish_rejected"
KEY_ROTATED = "channel.key_rotated"


def _iso(moment: datetime) -> str:
    return moment.isoformat()


class WebhookEvents:
    """Implements ``StreamEvents``; ``key_rotated`` is for the API and CLI paths."""

    def __init__(
        self,
        dispatcher: WebhookDispatcher,
        *,
        playback_url: Callable[[str], str] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.playback_url = playback_url
        """Public ``master.m3u8`` URL of a channel slug (ports are known only once started)."""

    def _send(self, event: str, data: dict[str, Any]) -> None:
        try:
            self.dispatcher.submit(event, data)
        except Exception:  # a notification must never break ingest
            log.exception("webhooks: could not queue %s", event)

    def _playback(self, slug: str) -> str | None:
        if self.playback_url is None:
            return None
        try:
            return self.playback_url(slug)
        except Exception:  # e.g. asked before the server knows its ports
            return None

    # -- StreamEvents ---------------------------------------------------------
    def stream_started(self, stream: LiveStream) -> None:
        channel = stream.channel
        publisher = stream.publisher
        self._send(
            STREAM_STARTED,
            {
                "channel": channel.slug,
                "channel_id": channel.id,
                "stream_id": stream.session_id,
                "started_at": _iso(stream.stats.started_at),
                "publisher": publisher.peer if publisher is not None else None,
                "playback_url": self._playback(channel.slug),
            },
        )

    def stream_ended(self, stream: LiveStream) -> None:
        channel = stream.channel
        self._send(
            STREAM_ENDED,
            {
                "channel": channel.slug,
                "channel_id": channel.id,
                "stream_id": stream.session_id,
                "started_at": _iso(stream.stats.started_at),
                "ended_at": _iso(utcnow()),
                "duration_seconds": round(stream.stats.uptime, 3),
                "segments": stream.segments,
                "peak_viewers": stream.stats.peak_viewers,
                "reason": stream.end_reason,
            },
        )

    def publish_rejected(self, peer: str, reason: str, channel: Channel | None) -> None:
        self._send(
            PUBLISH_REJECTED,
            {
                "channel": channel.slug if channel is not None else None,
                "channel_id": channel.id if channel is not None else None,
                "peer": peer,
                "reason": reason,
            },
        )

    # -- other events ---------------------------------------------------------
    def key_rotated(self, channel: Channel) -> None:
        """A channel's stream key was replaced (the payload never carries the key)."""
        self._send(KEY_ROTATED, key_rotated_payload(channel))


def key_rotated_payload(channel: Channel) -> dict[str, Any]:
    """``channel.key_rotated`` data, for callers without a dispatcher (the CLI uses
    :func:`vilokanam.hooks.enqueue_event` with it)."""
    return {
        "channel": channel.slug,
        "channel_id": channel.id,
        "rotated_at": _iso(channel.key_rotated_at),
    }
