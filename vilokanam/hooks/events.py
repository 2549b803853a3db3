"""Stream lifecycle → webhook events (the :class:`~vilokanam.ingest.streams.StreamEvents` hooks).

Every method builds the payload and hands it to the dispatcher, which queues it in the
background: they return at once and never fail the caller.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from vilokanam.hooks.dispatcher import WebhookDispatcher
from vilokanam.hooks.publish_auth import client_ip
from vilokanam.store import Channel
from vilokanam.store.models import utcnow

if TYPE_CHECKING:
    from vilokanam.ingest.streams import LiveStream

log = logging.getLogger(__name__)

STREAM_STARTED = "stream.started"
STREAM_ENDED = "stream.ended"
PUBLISH_REJECTED = "stream.publish_rejected"
KEY_ROTATED = "channel.key_rotated"

REJECTED_WINDOW = 60.0
"""At most one ``stream.publish_rejected`` per (client IP, channel, reason) this many seconds."""
REJECTED_KEYS = 10_000
"""How many (client IP, channel, reason) keys are remembered; the least recent are forgotten."""


def _iso(moment: datetime) -> str:
    return moment.isoformat()


@dataclass
class _Rejections:
    """The last ``stream.publish_rejected`` sent for one key, and the repeats held back since."""

    sent_at: float
    suppressed: int = 0


class WebhookEvents:
    """Implements ``StreamEvents``; ``key_rotated`` is for the API and CLI paths.

    ``stream.publish_rejected`` is coalesced: repeats of one (client IP, channel, reason) within
    ``rejected_window`` seconds are only counted, and the next event sent for that key carries
    the count as ``suppressed`` (so a bot guessing keys cannot grow the outbox without bound).
    """

    def __init__(
        self,
        dispatcher: WebhookDispatcher,
        *,
        playback_url: Callable[[str], str] | None = None,
        rejected_window: float = REJECTED_WINDOW,
        rejected_keys: int = REJECTED_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatcher = dispatcher
        self.playback_url = playback_url
        """Public ``master.m3u8`` URL of a channel slug (ports are known only once started)."""
        self.rejected_window = rejected_window
        self.rejected_keys = rejected_keys
        self._clock = clock
        self._rejections: OrderedDict[tuple[str, str | None, str], _Rejections] = OrderedDict()

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
        # Ended when the publisher left; the reconnect window after that is not the stream's.
        ended_at = stream.stats.publisher_left_at or utcnow()
        duration = (ended_at - stream.stats.started_at).total_seconds()
        self._send(
            STREAM_ENDED,
            {
                "channel": channel.slug,
                "channel_id": channel.id,
                "stream_id": stream.session_id,
                "started_at": _iso(stream.stats.started_at),
                "ended_at": _iso(ended_at),
                "duration_seconds": round(max(0.0, duration), 3),
                "segments": stream.segments,
                "peak_viewers": stream.stats.peak_viewers,
                "reason": stream.end_reason,
            },
        )

    def publish_rejected(self, peer: str, reason: str, channel: Channel | None) -> None:
        slug = channel.slug if channel is not None else None
        suppressed = self._coalesce((client_ip(peer), slug, reason))
        if suppressed is None:
            return
        self._send(
            PUBLISH_REJECTED,
            {
                "channel": slug,
                "channel_id": channel.id if channel is not None else None,
                "peer": peer,
                "reason": reason,
                "suppressed": suppressed,
            },
        )

    def _coalesce(self, key: tuple[str, str | None, str]) -> int | None:
        """None to hold this rejection back, else how many were held back since the last sent."""
        now = self._clock()
        seen = self._rejections.get(key)
        if seen is not None:
            self._rejections.move_to_end(key)
            if now - seen.sent_at < self.rejected_window:
                seen.suppressed += 1
                return None
            suppressed, seen.sent_at, seen.suppressed = seen.suppressed, now, 0
            return suppressed
        self._rejections[key] = _Rejections(now)
        while len(self._rejections) > self.rejected_keys:
            self._rejections.popitem(last=False)
        return 0

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
