"""Bearer checks: the operator token (constant time) and viewer keys (hashed lookup)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from vilokanam.origin.api.errors import ApiError

if TYPE_CHECKING:
    from vilokanam.store.models import Viewer

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vilokanam"'}


def require_token(request: web.Request, token: str) -> None:
    """Raise a 401 ApiError unless the request carries ``Authorization: Bearer <token>``."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api token>", CHALLENGE)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "invalid API token", CHALLENGE)


VIEWER_PREFIX = "vk_"


async def require_viewer(
    request: web.Request, viewer_for_key: Callable[[str], Viewer | None]
) -> Viewer:
    """The viewer whose key (``Authorization: Bearer vk_…``) the request carries, else 401."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    key = given.strip()
    if scheme.lower() != "bearer" or not key.startswith(VIEWER_PREFIX):
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <viewer key>", CHALLENGE)
    viewer = await asyncio.to_thread(viewer_for_key, key)
    if viewer is None:
        raise ApiError(401, "unauthorized", "invalid viewer key", CHALLENGE)
    return viewer
