"""Playback tokens: signed, expiring permission for one viewer to watch one channel.

A token is the URL-safe base64 (no padding) of::

    version (1 byte) | viewer_id (8, big-endian) | expires_at (8, unix seconds) |
    slug length (1) | slug (ASCII) | HMAC-SHA256(secret, everything before)[:16]

It needs no database to check: the origin verifies it on every playlist and segment request.
The MAC is truncated to 128 bits (RFC 2104 allows it) to keep playlist URLs short; it is compared
in constant time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from vilokanam.config import Settings

VERSION = 1
MAC_SIZE = 16
_HEAD = struct.Struct(">BQQB")
"""version, viewer_id, expires_at, slug length."""
MAX_TOKEN_LENGTH = 4 * (_HEAD.size + 255 + MAC_SIZE) // 3 + 4

SECRET_FILE = "billing-secret"
MIN_SECRET_LENGTH = 32

MISSING = "missing token"
MALFORMED = "malformed token"
BAD_SIGNATURE = "bad signature"
EXPIRED = "token expired"
OTHER_CHANNEL = "token is for another channel"


class TokenError(Exception):
    """A token that does not allow playback; ``reason`` is shown to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    viewer_id: int
    slug: str
    expires_at: int
    """Unix seconds."""


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: bytes | str, body: bytes) -> bytes:
    return hmac.new(_key(secret), body, hashlib.sha256).digest()[:MAC_SIZE]


def issue(secret: bytes | str, viewer_id: int, slug: str, expires_at: int) -> str:
    """A token letting ``viewer_id`` watch ``slug`` until ``expires_at`` (unix seconds)."""
    raw_slug = slug.encode("ascii")
    if not 0 < len(raw_slug) < 256:
        raise ValueError("slug must be 1-255 ASCII characters")
    if not 0 <= viewer_id < 2**64 or not 0 <= expires_at < 2**64:
        raise ValueError("viewer_id and expires_at must fit in 64 bits")
    body = _HEAD.pack(VERSION, viewer_id, int(expires_at), len(raw_slug)) + raw_slug
    return base64.urlsafe_b64encode(body + _mac(secret, body)).rstrip(b"=").decode("ascii")


def decode(token: str) -> tuple[bytes, bytes, Claims]:
    """``(signed body, mac, claims)`` of a well-formed token, unchecked; TokenError otherwise."""
    if not token:
        raise TokenError(MISSING)
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise TokenError(MALFORMED)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(MALFORMED) from None
    if len(raw) < _HEAD.size + 1 + MAC_SIZE:
        raise TokenError(MALFORMED)
    version, viewer_id, expires_at, length = _HEAD.unpack_from(raw)
    body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    if version != VERSION or length == 0 or len(body) != _HEAD.size + length:
        raise TokenError(MALFORMED)
    try:
        slug = body[_HEAD.size :].decode("ascii")
    except UnicodeDecodeError:
        raise TokenError(MALFORMED) from None
    return body, mac, Claims(viewer_id, slug, expires_at)


def verify(secret: bytes | str, token: str | None, slug: str, now: float) -> Claims:
    """The token's claims if it is genuine, unexpired and for ``slug``; else TokenError."""
    body, mac, claims = decode(token or "")
    if not hmac.compare_digest(mac, _mac(secret, body)):
        raise TokenError(BAD_SIGNATURE)
    if claims.expires_at <= now:
        raise TokenError(EXPIRED)
    if claims.slug != slug:
        raise TokenError(OTHER_CHANNEL)
    return claims


# -- the secret ---------------------------------------------------------------------------------
def secret_path(settings: Settings) -> Path:
    return settings.data_dir / SECRET_FILE


def load_or_create_secret(settings: Settings) -> bytes:
    """``billing.token_secret``; else the one in ``{data_dir}/billing-secret`` (made, 0600)."""
    if settings.billing.token_secret:
        return settings.billing.token_secret.encode()
    path = secret_path(settings)
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_text().strip()
        if len(existing) >= MIN_SECRET_LENGTH:
            return existing.encode()
        path.unlink()  # empty or truncated by a crash while writing: make a new one
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # the CLI or another server made it just now
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret.encode()
