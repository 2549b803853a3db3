"""Stream keys: generated with high entropy, stored only as hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

SLUG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
SLUG_RULE = "2-63 characters of a-z, 0-9 and '-', starting with a letter or digit"


def new_stream_key() -> str:
    """A 192-bit random key, URL- and OBS-safe."""
    return "sk_" + secrets.token_urlsafe(24)


def hash_stream_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_stream_key(key), stored_hash)


def valid_slug(slug: str) -> bool:
    return bool(SLUG_PATTERN.fullmatch(slug))
