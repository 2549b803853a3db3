"""The publish auth hook: an HTTP service asked before each publish (nginx-rtmp ``on_publish``).

Asked after the stream key matched. A 2xx answer allows the publish; any other status refuses
it, and so does no answer within ``publish_hook.timeout`` (fail closed: an auth service that is
down must not let everyone publish). When ``webhooks.secret`` is set the request is signed like
a webhook, so the hook can check it came from this server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp

from vilokanam.config import Settings
from vilokanam.hooks.dispatcher import display_url
from vilokanam.hooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, USER_AGENT, sign
from vilokanam.ingest.streams import PublishAttempt

log = logging.getLogger(__name__)

BODY_IN_REASON = 200
"""Characters of a refusing hook's (text) answer passed on to the publisher."""
UNAVAILABLE = "publish authorization unavailable, try again later"
"""The refusal the publisher sees when the hook timed out or could not be reached."""


def client_ip(peer: str) -> str:
    """``"203.0.113.5:50123"`` → ``"203.0.113.5"``; ``"::1:50123"`` → ``"::1"``."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host.strip("[]")


class HttpPublishAuthorizer:
    """An async ``PublishAuthorizer``: None allows the publish, a string is the refusal.

    The refusal reaches the RTMP client (``NetStream.Publish.BadName``) and the
    ``stream.publish_rejected`` webhook, so it carries the hook's HTTP status and its own text
    answer but never the hook's URL or a connection error; those go to the log.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.publish_hook.url:
            raise ValueError("publish_hook.url is not set")
        self.url = settings.publish_hook.url
        self.timeout = settings.publish_hook.timeout
        self.secret = settings.webhooks.secret
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def request_body(self, attempt: PublishAttempt) -> str:
        return json.dumps(
            {
                "action": "publish",
                "channel": attempt.channel.slug,
                "channel_id": attempt.channel.id,
                "client_ip": client_ip(attempt.peer),
                "peer": attempt.peer,
                "app": attempt.app,
                "query": attempt.query,
            },
            separators=(",", ":"),
        )

    def _headers(self, body: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.secret:
            timestamp = int(time.time())
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(self.secret, body, timestamp)
        return headers

    async def __call__(self, attempt: PublishAttempt) -> str | None:
        """None allows the publish; else the refusal, safe to show the RTMP client.

        The client never sees the hook's URL or connection errors: those are logged here.
        """
        body = self.request_body(attempt)
        where = display_url(self.url)
        slug = attempt.channel.slug
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client().post(
                    self.url, data=body.encode(), headers=self._headers(body), allow_redirects=False
                ) as response:
                    if 200 <= response.status < 300:
                        return None
                    raw = await response.content.read(4 * BODY_IN_REASON)
        except TimeoutError:
            log.warning(
                "channel %r: publish hook %s did not answer within %g s; publish refused",
                slug,
                where,
                self.timeout,
            )
            return UNAVAILABLE
        except aiohttp.ClientError as exc:
            log.warning(
                "channel %r: publish hook %s unreachable: %s: %s; publish refused",
                slug,
                where,
                type(exc).__name__,
                exc,
            )
            return UNAVAILABLE
        reason = f"publish refused by the publish hook (HTTP {response.status})"
        shown = " ".join(raw.decode("utf-8", "replace").split())[:BODY_IN_REASON]
        content_type = response.headers.get("Content-Type", "")
        if shown and content_type.startswith(("text/", "application/json")):
            reason += f": {shown}"  # the operator's own message to the publisher
        log.warning("channel %r: publish hook %s: %s", slug, where, reason)
        return reason

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
