"""The asyncio shell around the sans-I/O RTMP core: sockets, timeouts, and the stream manager.

Each connection is isolated: a protocol error, a timeout or a bug closes that one connection
with a logged reason and never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from vilokanam.config import Settings
from vilokanam.ingest import flv
from vilokanam.ingest.rtmp import (
    AudioData,
    ConnectionClosedByPeer,
    ConnectionState,
    ConnectRequested,
    MetaData,
    ProtocolError,
    PublishRequested,
    ServerConnection,
    Unpublished,
    VideoData,
    amf0,
)
from vilokanam.ingest.streams import LiveStream, Publisher, PublishRefused, StreamManager
from vilokanam.store import Channel

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024


class _Closed(Exception):
    """This connection is done; the reason is in the message."""


class RtmpConnectionHandler:
    """Drives one client connection: bytes ↔ core, events → stream manager."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        manager: StreamManager,
        settings: Settings,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.manager = manager
        self.settings = settings
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.conn = ServerConnection(out_chunk_size=settings.rtmp.chunk_size)
        self.stream: LiveStream | None = None
        self.publisher: Publisher | None = None
        self.publish_stream_id: int | None = None
        self._kicked: str | None = None

    async def run(self) -> None:
        reason = "closed"
        try:
            await self._loop()
        except _Closed as exc:
            reason = str(exc)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("rtmp %s: closing connection: %s", self.peer, reason)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            reason = f"connection lost: {exc!r}"
        except Exception:
            reason = "internal error"
            log.exception("rtmp %s: closing connection after an internal error", self.peer)
        finally:
            await self._cleanup(reason)

    async def _loop(self) -> None:
        rtmp = self.settings.rtmp
        loop = asyncio.get_running_loop()
        # The whole handshake must finish in time: a client trickling bytes gets no extension.
        handshake_ends = loop.time() + rtmp.handshake_timeout
        while True:
            if self._kicked:
                raise _Closed(self._kicked)
            in_handshake = self.conn.state is ConnectionState.HANDSHAKE
            timeout = max(0.0, handshake_ends - loop.time()) if in_handshake else rtmp.idle_timeout
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a shutdown's cancel.
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                phase = "handshake" if in_handshake else "idle"
                limit = rtmp.handshake_timeout if in_handshake else rtmp.idle_timeout
                log.warning("rtmp %s: %s timeout after %.1f s", self.peer, phase, limit)
                raise _Closed(f"{phase} timeout") from None
            events = self.conn.receive_data(data)
            for event in events:
                await self._handle(event)
            await self._flush()
            if not data:
                raise _Closed("peer closed the connection")
            if self.conn.closed:
                raise _Closed("protocol finished")

    async def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def _handle(self, event: object) -> None:
        match event:
            case ConnectRequested(app=app):
                log.info("rtmp %s: connect app=%r", self.peer, app)
            case PublishRequested():
                await self._publish(event)
            case MetaData(timestamp=timestamp, values=values):
                if self.stream is not None:
                    body = amf0.encode("onMetaData") + amf0.encode_ecma_array(values)
                    await self.stream.feed(flv.TAG_SCRIPT, timestamp, body)
            case AudioData(timestamp=timestamp, payload=payload):
                if self.stream is not None:
                    await self.stream.feed(flv.TAG_AUDIO, timestamp, payload)
            case VideoData(timestamp=timestamp, payload=payload):
                if self.stream is not None:
                    await self.stream.feed(flv.TAG_VIDEO, timestamp, payload)
            case Unpublished(stream_id=stream_id) if stream_id == self.publish_stream_id:
                await self._unpublish()
            case ConnectionClosedByPeer():
                pass

    async def _publish(self, event: PublishRequested) -> None:
        if self.stream is not None:
            raise ProtocolError("publish while already publishing on this connection")
        # nginx-rtmp style auth puts a query on the app (rtmp://host/live?token=…): pass it on.
        app, _, app_query = event.app.partition("?")
        app = app.strip("/")
        if app != self.settings.rtmp.app:
            await self._refuse(
                event, f"unknown application {app!r} (use /{self.settings.rtmp.app})"
            )
            return
        query = "&".join(part for part in (app_query, event.query) if part)
        publisher = Publisher(peer=self.peer, kick=self.kick, app=app, query=query)
        try:
            stream = await self.manager.start_publish(event.name, publisher)
        except PublishRefused as exc:
            await self._refuse(event, str(exc), exc.channel)
            return
        self.stream, self.publisher, self.publish_stream_id = stream, publisher, event.stream_id
        self.conn.accept_publish(event.stream_id)
        log.info("rtmp %s: publishing channel %r", self.peer, stream.channel.slug)

    async def _refuse(
        self, event: PublishRequested, reason: str, channel: Channel | None = None
    ) -> None:
        log.warning("rtmp %s: publish refused: %s", self.peer, reason)
        self.manager.events.publish_rejected(self.peer, reason, channel)
        self.conn.reject_publish(event.stream_id, reason)
        await self._flush()
        raise _Closed(f"publish refused: {reason}")

    async def _unpublish(self) -> None:
        stream, publisher = self.stream, self.publisher
        self.stream = self.publisher = None
        self.publish_stream_id = None
        if stream is not None and publisher is not None:
            await self.manager.publisher_gone(stream, publisher)

    def kick(self, reason: str) -> None:
        """Called by the manager (another publisher took over, shutdown): close soon."""
        self._kicked = reason
        self.stream = None  # stop feeding at once
        self.publisher = None
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def _cleanup(self, reason: str) -> None:
        log.info("rtmp %s: connection closed (%s)", self.peer, reason)
        with contextlib.suppress(Exception):
            await self._unpublish()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class RtmpServer:
    """Listens for RTMP publishers."""

    def __init__(self, settings: Settings, manager: StreamManager) -> None:
        self.settings = settings
        self.manager = manager
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._on_client, self.settings.rtmp.host, self.settings.rtmp.port
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError):  # shutdown: nothing to report
                await RtmpConnectionHandler(reader, writer, self.manager, self.settings).run()
        finally:
            self._connections.discard(task)

    async def stop(self) -> None:
        """Stop listening, close every connection, then wait (3.12+ waits for clients here)."""
        if self.server is not None:
            self.server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
