"""A real S3 API for tests: moto in server mode over HTTP, and a proxy that can cut it off.

Fixtures: ``moto_server`` (session: moto listening on loopback; its endpoint URL), ``s3_bucket``
(function: moto reset, a fresh bucket and a client on it) and ``s3_proxy`` (function: a TCP
proxy in front of moto whose ``pause()`` makes S3 unreachable, connection refused and open
connections reset, until ``resume()``). Without moto the tests skip, or fail in CI
(``VILOKANAM_REQUIRE_ALL=1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import struct
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.outside import unavailable

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe when a key is missing
}
_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 on ``127.0.0.1``, an ephemeral port; the endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto[s3,server] not installed ({exc}); pip install -e '.[test]'")
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 2})
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)


@dataclass
class Bucket:
    name: str
    endpoint: str
    """moto itself (not the proxy): what a test reads the bucket through."""
    client: Any

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def url(self, key: str) -> str:
        """The object over plain HTTP, as a player or a CDN fetches it (see make_public)."""
        return f"{self.endpoint}/{self.name}/{key}"

    def make_public(self) -> None:
        """Let anyone read objects (a bucket policy), as for a bucket behind a public CDN."""
        statement = {
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{self.name}/*",
        }
        policy = {"Version": "2012-10-17", "Statement": [statement]}
        self.client.put_bucket_policy(Bucket=self.name, Policy=json.dumps(policy))


@pytest.fixture
def s3_bucket(moto_server: str) -> Bucket:
    """moto emptied, then a new bucket."""
    reset_moto(moto_server)
    client = s3_client(moto_server)
    name = f"vilokanam-test-{next(_bucket_numbers)}"
    client.create_bucket(Bucket=name)
    return Bucket(name, moto_server, client)


class PausableProxy:
    """A TCP proxy to ``upstream`` on its own event loop thread.

    :meth:`pause` closes the listening socket (new connections are refused) and resets every
    open connection, like S3 going away; :meth:`resume` listens on the same port again.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PausableProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def pause(self) -> None:
        self._call(self._pause())

    def resume(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        self._call(self._pause())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _pause(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            _reset(writer)
        self._open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        pair = {writer, up_writer}
        self._open |= pair
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._open -= pair


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, as a crashed or unplugged server's peer sees it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
def s3_proxy(moto_server: str) -> Iterator[PausableProxy]:
    """A proxy in front of moto: point the storage at ``s3_proxy.endpoint``."""
    proxy = PausableProxy(moto_server).start()
    try:
        yield proxy
    finally:
        proxy.stop()
