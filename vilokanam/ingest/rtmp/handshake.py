"""The RTMP handshake, server side: C0 C1 C2 in, S0 S1 S2 out (spec section 5.2).

Flash-era clients (librtmp in FP9 mode, ffmpeg, FMLE) use the undocumented "complex"
handshake: C1 carries an HMAC-SHA256 digest at one of two scheme-dependent offsets, and they
may refuse a server whose S1/S2 are not signed the same way. When C1's digest validates we
answer in kind; otherwise we do the plain handshake (S2 echoes C1), which everybody accepts.
C2 is consumed but not checked: clients disagree on what it should contain.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Final

from vilokanam.ingest.rtmp.errors import ProtocolError

RTMP_VERSION: Final = 3
PACKET_SIZE: Final = 1536
DIGEST_SIZE: Final = 32

_KEY_TAIL: Final = bytes.fromhex("f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae")
FP_KEY: Final = b"Genuine Adobe Flash Player 001" + _KEY_TAIL
"""Client key: its first 30 bytes sign C1, all of it derives the C2 signing key."""
FMS_KEY: Final = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL
"""Server key: its first 36 bytes sign S1, all of it derives the S2 signing key."""
FP_KEY_SIGN: Final = FP_KEY[:30]
FMS_KEY_SIGN: Final = FMS_KEY[:36]

SERVER_VERSION: Final = bytes((4, 5, 0, 1))
"""Announced in S1 for the complex handshake; clients check its first byte is at least 3."""

_ENCRYPTED_VERSIONS: Final = (6, 8, 9)
_TLS_HANDSHAKE: Final = 0x16

RandomBytes = Callable[[int], bytes]


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def digest_offset(packet: bytes, scheme: int) -> int:
    """Where the 32-byte digest sits in a 1536-byte C1/S1 under scheme 0 or 1."""
    base = 8 if scheme == 0 else 772
    return base + 4 + sum(packet[base : base + 4]) % 728


def compute_digest(packet: bytes, offset: int, key: bytes) -> bytes:
    """HMAC-SHA256 of the packet with the 32 digest bytes at ``offset`` left out."""
    return _hmac(key, packet[:offset] + packet[offset + DIGEST_SIZE :])


def find_digest(packet: bytes, key: bytes) -> tuple[int, bytes] | None:
    """The (scheme, digest) under which ``packet`` carries a valid digest, if any."""
    for scheme in (0, 1):
        offset = digest_offset(packet, scheme)
        digest = packet[offset : offset + DIGEST_SIZE]
        if hmac.compare_digest(digest, compute_digest(packet, offset, key)):
            return scheme, digest
    return None


def sign_packet(packet: bytes, scheme: int, key: bytes) -> bytes:
    """Place a digest into a 1536-byte C1/S1 under ``scheme``."""
    offset = digest_offset(packet, scheme)
    digest = compute_digest(packet, offset, key)
    return packet[:offset] + digest + packet[offset + DIGEST_SIZE :]


def response_signature(body: bytes, peer_digest: bytes, key: bytes) -> bytes:
    """The trailing signature of S2 (or C2): keyed by the peer's C1/S1 digest."""
    return _hmac(_hmac(key, peer_digest), body[: PACKET_SIZE - DIGEST_SIZE])


def build_c1(scheme: int | None = None, random_bytes: RandomBytes = os.urandom) -> bytes:
    """A client C1, plain (``scheme=None``) or digest-signed like Flash Player / ffmpeg."""
    if scheme is None:
        return bytes(8) + random_bytes(PACKET_SIZE - 8)
    packet = bytes(4) + bytes((9, 0, 124, 2)) + random_bytes(PACKET_SIZE - 8)
    return sign_packet(packet, scheme, FP_KEY_SIGN)


class ServerHandshake:
    """Consumes C0 C1 C2, produces S0 S1 S2 once C0 and C1 are in."""

    def __init__(self, random_bytes: RandomBytes = os.urandom) -> None:
        self._random_bytes = random_bytes
        self._buffer = bytearray()
        self._out = bytearray()
        self._replied = False
        self.complete = False
        self.digest_scheme: int | None = None
        """0 or 1 when the client used the complex handshake, None for the plain one."""

    def receive_data(self, data: bytes) -> bytes:
        """Consume handshake bytes; return whatever follows C2 (empty until complete)."""
        if self.complete:
            return bytes(data)
        self._buffer += data
        if self._buffer and self._buffer[0] != RTMP_VERSION:
            self._check_version(self._buffer[0])
        if not self._replied and len(self._buffer) >= 1 + PACKET_SIZE:
            self._reply(bytes(self._buffer[1 : 1 + PACKET_SIZE]))
        if self._replied and len(self._buffer) >= 1 + 2 * PACKET_SIZE:
            self.complete = True
            rest = bytes(self._buffer[1 + 2 * PACKET_SIZE :])
            self._buffer = bytearray()
            return rest
        return b""

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @staticmethod
    def _check_version(version: int) -> None:
        if version in _ENCRYPTED_VERSIONS:
            raise ProtocolError(f"encrypted RTMP (RTMPE, version {version}) is not supported")
        if version == _TLS_HANDSHAKE:
            raise ProtocolError("TLS client hello on a plain RTMP port (rtmps:// is not served)")
        if version >= 32:
            raise ProtocolError(f"not an RTMP client: first byte 0x{version:02x}")
        # Versions 0-2 and other reserved values: the spec says answer 3 and let the client
        # decide whether to continue.

    def _reply(self, c1: bytes) -> None:
        found = find_digest(c1, FP_KEY_SIGN)
        if found is None:
            s1 = bytes(8) + self._random_bytes(PACKET_SIZE - 8)
            s2 = c1
        else:
            self.digest_scheme, client_digest = found
            s1 = sign_packet(
                bytes(4) + SERVER_VERSION + self._random_bytes(PACKET_SIZE - 8),
                self.digest_scheme,
                FMS_KEY_SIGN,
            )
            body = self._random_bytes(PACKET_SIZE - DIGEST_SIZE)
            s2 = body + response_signature(body, client_digest, FMS_KEY)
        self._out += bytes((RTMP_VERSION,)) + s1 + s2
        self._replied = True
