"""Webhook signatures: HMAC-SHA256 over ``"{timestamp}.{body}"`` (the Stripe scheme).

The timestamp is inside the signed text, so a captured request cannot be replayed after the
receiver's tolerance window. The header may carry several ``v1=`` values (one per secret while a
secret is being rotated); a receiver accepts the request if any of them matches.

    Vilokanam-Signature: t=1767225600,v1=5257a869e7…
"""

from __future__ import annotations

import hashlib
import hmac
import time
from importlib.metadata import PackageNotFoundError, version

SIGNATURE_HEADER = "Vilokanam-Signature"
EVENT_HEADER = "Vilokanam-Event"
DELIVERY_HEADER = "Vilokanam-Delivery"
TIMESTAMP_HEADER = "Vilokanam-Timestamp"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300


def _user_agent() -> str:
    try:
        return f"vilokanam/{version('vilokanam')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "vilokanam/dev"


USER_AGENT = _user_agent()


def _as_bytes(body: str | bytes) -> bytes:
    return body.encode() if isinstance(body, str) else body


def signature(secret: str, body: str | bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``"{timestamp}.{body}"`` under ``secret``."""
    message = str(int(timestamp)).encode() + b"." + _as_bytes(body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: str | bytes, timestamp: int) -> str:
    """The ``Vilokanam-Signature`` header value: ``t=<timestamp>,v1=<hex>``."""
    return f"t={int(timestamp)},{SCHEME}={signature(secret, body, timestamp)}"


def parse(header: str) -> tuple[int | None, list[str]]:
    """``(timestamp, [v1 signatures])`` from a header; unknown schemes are ignored."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return None, []
        elif key == SCHEME and value:
            signatures.append(value)
    return timestamp, signatures


def verify(
    secret: str,
    body: str | bytes,
    header: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and its timestamp is within tolerance.

    ``body`` must be the raw request body, byte for byte (not re-serialized JSON). The
    comparison is constant-time.
    """
    timestamp, signatures = parse(header)
    if timestamp is None or not signatures:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp)
    # Compare with every candidate (no early exit), so timing says nothing about which matched.
    matches = [hmac.compare_digest(expected, candidate) for candidate in signatures]
    return any(matches)


def webhook_headers(
    secret: str, body: str | bytes, *, event: str, delivery_id: str, timestamp: int | None = None
) -> dict[str, str]:
    """Every header of one webhook request, signed now (or at ``timestamp``)."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, body, timestamp),
    }
