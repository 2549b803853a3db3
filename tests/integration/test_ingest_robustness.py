"""Ingest robustness on real sockets: malformed input, timeouts, takeovers and worker crashes.

Every test runs a real server (``start_server``) and talks to it over TCP: hostile or broken
clients are raw sockets driven by :class:`ClientScript`; well-behaved publishers are the ffmpeg
CLI. Outcomes are checked where a user sees them: the socket, the playlists, the decoded media.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import m3u8
import pytest

from tests.conftest import require_tool
from tests.media import (
    decode_summary,
    ffmpeg_publish_command,
    http_get,
    wait_for,
)
from vilokanam.ingest.rtmp import Message, MessageType
from vilokanam.ingest.rtmp import messages as msg
from vilokanam.ingest.rtmp.messages import Command
from vilokanam.ingest.rtmp.testing import SERVER_HANDSHAKE_SIZE, ClientScript
from vilokanam.store import SessionState

pytestmark = pytest.mark.e2e

FPS = 25
GOP_FRAMES = 50  # ffmpeg_publish_command: a keyframe every 2 s, the segment duration


# -- a raw RTMP client on a real socket ------------------------------------------------------


class RawClient:
    """A TCP client that speaks as much RTMP as a test wants, and notices when it is closed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.script = ClientScript()
        self.commands: list[Command] = []
        self.last_sent = time.monotonic()

    def send(self, data: bytes) -> bool:
        """False when the server already closed (it may refuse before reading everything)."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        self.last_sent = time.monotonic()
        return True

    def handshake(self) -> None:
        assert self.send(self.script.c0c1())
        received = 0
        while received < SERVER_HANDSHAKE_SIZE:
            data = self.sock.recv(SERVER_HANDSHAKE_SIZE - received)
            assert data, "server closed during the handshake"
            self.script.read_server(data)
            received += len(data)
        assert self.send(self.script.c2())

    def read_until(self, done: Callable[[list[Command]], bool], timeout: float = 10.0) -> None:
        """Read server messages until ``done(commands so far)``."""
        deadline = time.monotonic() + timeout
        while not done(self.commands):
            left = deadline - time.monotonic()
            assert left > 0, f"no such reply within {timeout} s; got {self.commands}"
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            assert data, f"server closed the connection; got {self.commands}"
            self.commands += ClientScript.commands(self.script.read_server(data))

    def statuses(self) -> list[str]:
        return [c.args[0]["code"] for c in self.commands if c.name == "onStatus"]

    def connect(self, app: str = "live") -> None:
        self.handshake()
        self.send(self.script.set_chunk_size(4096) + self.script.connect(app))
        self.read_until(lambda commands: any(c.name == "_result" for c in commands))
        [result] = [c for c in self.commands if c.name == "_result"]
        assert result.args[0]["code"] == "NetConnection.Connect.Success"

    def publish(self, key: str, app: str = "live") -> str:
        """Connect and publish like OBS; the onStatus code the server answered with."""
        self.connect(app)
        s = self.script
        self.send(s.release_stream(key) + s.fc_publish(key) + s.create_stream() + s.publish(key))
        self.read_until(lambda _: bool(self.statuses()))
        return self.statuses()[0]

    def send_flv(self, flv: bytes) -> int:
        """Send an FLV file's tags as RTMP media on stream 1; the number of video frames."""
        frames = 0
        out = bytearray()
        for kind, timestamp, body in flv_tags(flv):
            if kind == 9:
                out += self.script.video(timestamp, body)
                frames += body[1:2] == b"\x01"  # AVC NALU (not the sequence header)
            elif kind == 8:
                out += self.script.audio(timestamp, body)
            elif kind == 18:
                data = Message(MessageType.DATA_AMF0, body, timestamp, 1, msg.CSID_DATA)
                out += self.script.send(data)
        assert self.send(bytes(out))
        return frames

    def is_open(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return True
        try:
            return bool(self.sock.recv(65536, socket.MSG_PEEK))
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


def closed_after(clients: list[RawClient], timeout: float) -> list[float | None]:
    """For each client: seconds from its last send until the server closed it (EOF or reset).

    Anything the server sends meanwhile is read and dropped; None for a socket still open
    after ``timeout`` seconds.
    """
    result: list[float | None] = [None] * len(clients)
    deadline = time.monotonic() + timeout
    while any(r is None for r in result):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        waiting = [c.sock for c, r in zip(clients, result, strict=True) if r is None]
        readable, _, _ = select.select(waiting, [], [], left)
        now = time.monotonic()
        for index, client in enumerate(clients):
            if result[index] is not None or client.sock not in readable:
                continue
            try:
                eof = not client.sock.recv(65536)
            except OSError:
                eof = True
            if eof:
                result[index] = now - client.last_sent
    return result


def flv_tags(flv: bytes) -> list[tuple[int, int, bytes]]:
    """(tag type, timestamp ms, body) of every tag of an FLV file."""
    assert flv[:3] == b"FLV"
    offset = int.from_bytes(flv[5:9], "big") + 4
    tags = []
    while offset + 11 <= len(flv):
        size = int.from_bytes(flv[offset + 1 : offset + 4], "big")
        timestamp = int.from_bytes(flv[offset + 4 : offset + 7], "big") | flv[offset + 7] << 24
        tags.append((flv[offset] & 0x1F, timestamp, flv[offset + 11 : offset + 11 + size]))
        offset += 11 + size + 4
    return tags


# -- server-side observations ----------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def segment_count(body: bytes) -> int:
    return body.count(b"#EXTINF")


def ended_source(server, slug: str) -> m3u8.M3U8:  # type: ignore[no-untyped-def]
    """Wait for ENDLIST on the channel's source rendition; its playlist."""
    url = f"{server.http_base}/live/{slug}/source/index.m3u8"
    return m3u8.loads(wait_for(url, 60, lambda b: b"#EXT-X-ENDLIST" in b).decode(), uri=url)


def decode_all(playlist: m3u8.M3U8) -> list[int]:
    """Video frames of each segment, each decoded with the init section the playlist names."""
    frames = []
    for segment in playlist.segments:
        status, data, _ = http_get(segment.absolute_uri)
        assert status == 200, segment.uri
        init = b""
        if segment.init_section is not None:
            status, init, _ = http_get(segment.init_section.absolute_uri)
            assert status == 200, segment.init_section.uri
        frames.append(int(decode_summary(init + data)["video_frames"]))  # type: ignore[arg-type]
    return frames


def live_stream(server, slug: str):  # type: ignore[no-untyped-def]
    """The server's LiveStream for ``slug`` (read from the test thread), or None."""
    for stream in list(server.server.manager.streams.values()):
        if stream.channel.slug == slug:
            return stream
    return None


def healthy(server) -> bool:  # type: ignore[no-untyped-def]
    status, body, _ = http_get(f"{server.http_base}/healthz")
    return status == 200 and b'"ok"' in body


def start_ffmpeg(ffmpeg: str, url: str, *, seconds: float, readrate: float) -> subprocess.Popen:
    command = ffmpeg_publish_command(ffmpeg, url, seconds=seconds, readrate=readrate)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


@pytest.fixture
def raw() -> Iterator[Callable[[int], RawClient]]:
    """``raw(port)`` opens a :class:`RawClient`; all are closed after the test."""
    clients: list[RawClient] = []

    def open_client(port: int) -> RawClient:
        clients.append(RawClient(port))
        return clients[-1]

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def source_flv(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """6 s of the ffmpeg test pattern + tone as an FLV file: H.264 (GOP 2 s) + AAC."""
    ffmpeg = require_tool("ffmpeg", "makes real H.264/AAC media for the raw RTMP client")
    path = tmp_path_factory.mktemp("flv") / "source.flv"
    command = ffmpeg_publish_command(ffmpeg, str(path), seconds=6, readrate=1000)
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return Path(path).read_bytes()


# -- 1. malformed input closes that connection only ------------------------------------------


def _chunk(csid: int, length: int, type_id: int, payload: bytes) -> bytes:
    """A chunk with a full (type-0) header on stream 0, by hand so that any value can be sent."""
    return (
        bytes((csid,))
        + bytes(3)
        + length.to_bytes(3, "big")
        + bytes((type_id,))
        + bytes(4)
        + payload
    )


AFTER_HANDSHAKE: dict[str, Callable[[ClientScript], bytes]] = {
    "random garbage": lambda c: c.connect() + random.Random(7).randbytes(64 * 1024),
    "new header inside a message": lambda c: (
        _chunk(3, 1000, MessageType.COMMAND_AMF0, bytes(128))
        + _chunk(3, 1000, MessageType.COMMAND_AMF0, bytes(128))
    ),
    "chunk size with the top bit set": lambda c: _chunk(
        2, 4, MessageType.SET_CHUNK_SIZE, (0x8000_0000).to_bytes(4, "big")
    ),
    "unknown AMF0 marker in a command": lambda c: (
        c.connect() + c.send(Message(MessageType.COMMAND_AMF0, b"\x02\x00\x0dreleaseStream\x42"))
    ),
    "command before connect": lambda c: c.create_stream(),
}

INSTEAD_OF_HANDSHAKE = {
    "random bytes": random.Random(1).randbytes(8192),
    "random bytes after a valid version byte": b"\x03" + random.Random(2).randbytes(64 * 1024),
    "HTTP request": b"GET /live/demo HTTP/1.1\r\nHost: example\r\n\r\n",
    "TLS client hello": bytes.fromhex("16030100a5010000a10303") + bytes(160),
}


def test_malformed_clients_are_closed_and_a_live_publisher_is_untouched(  # type: ignore[no-untyped-def]
    start_server, raw, caplog
) -> None:
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is the concurrent real publisher")
    server = start_server(rtmp={"reconnect_window": 0.5})
    port = server.settings.rtmp.port
    key = server.create_channel("steady")
    steady = start_ffmpeg(ffmpeg, f"{server.rtmp_base}/{key}", seconds=10, readrate=2.0)
    try:
        wait_for(f"{server.http_base}/live/steady/master.m3u8", 30)  # live, mid-stream
        clients = []
        for name, make in AFTER_HANDSHAKE.items():
            client = raw(port)
            client.handshake()
            client.send(make(client.script))
            clients.append((name, client))
        for name, payload in INSTEAD_OF_HANDSHAKE.items():
            client = raw(port)
            client.send(payload)
            clients.append((name, client))
        closed = closed_after([client for _, client in clients], timeout=5)
        assert steady.poll() is None, "the real publisher was still streaming meanwhile"
    finally:
        returncode, stderr = finish(steady)
    for (name, _), seconds in zip(clients, closed, strict=True):
        assert seconds is not None, f"{name}: connection not closed by the server"
    protocol_errors = [r.message for r in caplog.records if "protocol error" in r.message]
    assert len(protocol_errors) == len(clients), protocol_errors
    assert healthy(server)

    assert returncode == 0, f"the concurrent publisher failed: {stderr}"
    playlist = ended_source(server, "steady")
    assert sum(decode_all(playlist)) == 10 * FPS, "every frame of the real publisher"
    assert not any(s.discontinuity for s in playlist.segments)
    assert [s.state for s in server.store.sessions()] == [SessionState.ENDED]

    # A new connection afterwards is served as usual.
    fresh = raw(port)
    assert fresh.publish(key) == "NetStream.Publish.Start"


def test_absurd_message_length_is_refused_at_once(start_server, raw) -> None:  # type: ignore[no-untyped-def]
    server = start_server()  # idle timeout 30 s: only a refusal closes the socket in time
    client = raw(server.settings.rtmp.port)
    client.connect()
    # A 16 MiB - 1 byte command message: no client sends commands of more than a few KiB.
    client.send(_chunk(3, 0xFFFFFF, MessageType.COMMAND_AMF0, bytes(4096)))
    [seconds] = closed_after([client], timeout=3)
    assert seconds is not None, "connection still open 3 s after an absurd message length"


# -- 2. handshake and idle timeouts ----------------------------------------------------------


def test_silent_and_stalled_clients_time_out(start_server, raw) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        rtmp={"handshake_timeout": 1.0, "idle_timeout": 1.5, "reconnect_window": 0.5}
    )
    port = server.settings.rtmp.port
    key = server.create_channel("frozen")
    silent = raw(port)  # sends nothing at all
    half = raw(port)  # C0 and half of C1
    assert half.send(half.script.c0c1()[:700])
    connected = raw(port)  # handshake + connect, then nothing
    connected.connect()
    publishing = raw(port)  # publish accepted, then nothing (a frozen encoder)
    assert publishing.publish(key) == "NetStream.Publish.Start"
    assert live_stream(server, "frozen") is not None

    handshake_silent, handshake_half, idle_connected, idle_publishing = closed_after(
        [silent, half, connected, publishing], timeout=5
    )
    assert handshake_silent is not None and 0.8 <= handshake_silent <= 3.0, handshake_silent
    assert handshake_half is not None and 0.8 <= handshake_half <= 3.0, handshake_half
    assert idle_connected is not None and 1.3 <= idle_connected <= 3.5, idle_connected
    assert idle_publishing is not None and 1.3 <= idle_publishing <= 3.5, idle_publishing

    # The frozen publisher's stream ends once the reconnect window has passed.
    wait_until(
        lambda: [s.state for s in server.store.sessions()] == [SessionState.ENDED],
        5,
        "the frozen publisher's session ended",
    )
    assert live_stream(server, "frozen") is None
    assert healthy(server)


def test_handshake_must_finish_within_the_timeout(start_server, raw) -> None:  # type: ignore[no-untyped-def]
    server = start_server(rtmp={"handshake_timeout": 1.0, "idle_timeout": 1.5})
    client = raw(server.settings.rtmp.port)
    started = time.monotonic()
    hello = client.script.c0c1()
    for offset in range(0, len(hello), 16):  # 16 bytes every 0.25 s: 24 s for C0 C1
        if not client.send(hello[offset : offset + 16]) or not client.is_open():
            break
        if time.monotonic() - started > 4:
            break
        time.sleep(0.25)
    assert not client.is_open(), "still in the handshake 4 s after a 1 s handshake timeout"


# -- 3. a stale publisher is replaced by the same key (OBS reconnecting) ---------------------


def test_stale_publisher_is_replaced_and_the_playlist_continues(  # type: ignore[no-untyped-def]
    start_server, raw, source_flv, caplog
) -> None:
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is the reconnecting publisher")
    caplog.set_level(logging.INFO, logger="vilokanam")
    server = start_server(rtmp={"reconnect_window": 0.5})
    key = server.create_channel("obs")
    playlist_url = f"{server.http_base}/live/obs/source/index.m3u8"

    stale = raw(server.settings.rtmp.port)
    assert stale.publish(key) == "NetStream.Publish.Start"
    first_frames = stale.send_flv(source_flv)  # 6 s, then silence with the socket left open
    assert first_frames == 6 * FPS
    wait_for(playlist_url, 30, lambda body: segment_count(body) >= 2)
    assert stale.is_open()

    second = start_ffmpeg(ffmpeg, f"{server.rtmp_base}/{key}", seconds=6, readrate=3.0)
    try:
        [closed] = closed_after([stale], timeout=15)
        assert closed is not None, "the stale connection was not closed by the server"
    finally:
        returncode, stderr = finish(second)
    assert returncode == 0, f"the new publisher was refused or failed: {stderr}"
    assert any("replaces" in r.message for r in caplog.records)

    playlist = ended_source(server, "obs")
    assert len(server.store.sessions()) == 1, "one stream session across the takeover"
    frames = decode_all(playlist)
    joins = [i for i, s in enumerate(playlist.segments) if s.discontinuity]
    assert len(joins) == 1, "one EXT-X-DISCONTINUITY, where the new publisher began"
    assert sum(frames[: joins[0]]) == first_frames, "the stale publisher's media, all of it"
    assert sum(frames[joins[0] :]) == 6 * FPS, "the new publisher's media, all of it"
    inits = [s.init_section.uri for s in playlist.segments]
    assert set(inits[: joins[0]]) == {"s1-init-0.mp4"}
    assert set(inits[joins[0] :]) == {"s1-init-1.mp4"}
    sequences = [int(s.uri.removeprefix("s1-seg-").split(".")[0]) for s in playlist.segments]
    assert sequences == list(range(len(sequences)))


# -- 4. a crashed transcode worker is restarted and the stream goes on -----------------------


def test_killed_worker_is_restarted_and_the_stream_continues(start_server) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is the real publisher")
    server = start_server(rtmp={"reconnect_window": 0.5})
    key = server.create_channel("crashy")
    playlist_url = f"{server.http_base}/live/crashy/source/index.m3u8"
    publisher = start_ffmpeg(ffmpeg, f"{server.rtmp_base}/{key}", seconds=12, readrate=1.0)
    try:
        wait_for(playlist_url, 30, lambda body: segment_count(body) >= 2)
        stream = live_stream(server, "crashy")
        worker = stream.worker
        assert worker is not None and worker.process is not None and stream.epoch == 0
        os.kill(worker.process.pid, signal.SIGKILL)
        wait_until(
            lambda: stream.epoch == 1 and stream.worker is not None,
            10,
            "a new transcode worker started",
        )
        assert stream.worker.process.pid != worker.process.pid
        assert publisher.poll() is None, "the publisher was never interrupted"
    finally:
        returncode, stderr = finish(publisher)
    assert returncode == 0, f"the publisher saw the crash: {stderr}"

    playlist = ended_source(server, "crashy")
    frames = decode_all(playlist)
    assert all(frames), f"every segment decodes: {frames}"
    joins = [i for i, s in enumerate(playlist.segments) if s.discontinuity]
    assert len(joins) == 1, "one EXT-X-DISCONTINUITY, at the restart"
    inits = [s.init_section.uri for s in playlist.segments]
    assert set(inits[: joins[0]]) == {"s1-init-0.mp4"}
    assert set(inits[joins[0] :]) == {"s1-init-1.mp4"}
    assert (playlist.media_sequence or 0) == 0
    sequences = [int(s.uri.removeprefix("s1-seg-").split(".")[0]) for s in playlist.segments]
    assert sequences == list(range(len(sequences))), "no gap in the media sequence"
    # At most the GOP in flight when the worker died, and the one it restarts after, are lost.
    assert 12 * FPS - 2 * GOP_FRAMES <= sum(frames) < 12 * FPS, frames
    assert sum(frames[joins[0] :]) >= 2 * GOP_FRAMES, "the stream went on after the restart"
    assert len(server.store.sessions()) == 1


# -- 5. the wrong application is refused -----------------------------------------------------


def test_publish_to_another_application_is_refused(start_server, raw, caplog) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is a real publisher")
    server = start_server()
    key = server.create_channel("apps")
    port = server.settings.rtmp.port

    command = ffmpeg_publish_command(
        ffmpeg, f"rtmp://127.0.0.1:{port}/other/{key}", seconds=2, readrate=1000
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, "ffmpeg reports the refusal"

    client = raw(port)
    assert client.publish(key, app="other") == "NetStream.Publish.BadName"
    [status] = [c for c in client.commands if c.name == "onStatus"]
    assert "unknown application 'other'" in status.args[0]["description"]
    assert closed_after([client], timeout=5) != [None], "the refused connection is closed"

    refusals = [r.message for r in caplog.records if "publish refused" in r.message]
    assert len(refusals) == 2 and all("unknown application 'other'" in m for m in refusals)
    assert server.store.sessions() == []
    assert live_stream(server, "apps") is None
    assert not any((server.settings.media_dir / "streams").glob("*"))
    status_code, _, _ = http_get(f"{server.http_base}/live/apps/master.m3u8")
    assert status_code == 404
