"""Public URLs printed for operators: where to publish, where to watch."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from vilokanam.config.settings import Settings


def public_host(settings: Settings) -> str:
    """The host name to print in URLs: configured, else this machine's outward address."""
    if settings.public_host:
        return settings.public_host
    if settings.http.host not in ("0.0.0.0", "::", ""):
        return settings.http.host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outward interface
        address = probe.getsockname()[0]
        if not address.startswith("0."):
            return str(address)
    return "127.0.0.1"


@dataclass(frozen=True)
class Urls:
    rtmp_server: str
    http_base: str

    def rtmp_publish(self, stream_key: str) -> str:
        return f"{self.rtmp_server}/{stream_key}"

    def playback(self, slug: str) -> str:
        return f"{self.http_base}/live/{slug}/master.m3u8"

    def watch_page(self, slug: str) -> str:
        return f"{self.http_base}/watch/{slug}"

    def vod(self, stream_id: int, name: str = "master.m3u8") -> str:
        """A recorded stream's file: its master playlist, or ``thumbnail.jpg``."""
        return f"{self.http_base}/vod/{stream_id}/{name}"


def urls_for(
    settings: Settings, rtmp_port: int | None = None, http_port: int | None = None
) -> Urls:
    host = public_host(settings)
    rtmp_port = rtmp_port or settings.rtmp.port
    http_port = http_port or settings.http.port
    return Urls(f"rtmp://{host}:{rtmp_port}/{settings.rtmp.app}", f"http://{host}:{http_port}")
