"""Operator bearer-token check, in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from vilokanam.origin.api.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vilokanam"'}


def require_token(request: web.Request, token: str) -> None:
    """Raise a 401 ApiError unless the request carries ``Authorization: Bearer <token>``."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api token>", CHALLENGE)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "invalid API token", CHALLENGE)
