"""The operator REST API under ``/api/v1``: channels, live streams, history, status.

``setup_api`` is imported lazily so that the CLI can use ``schemas`` and ``service`` without
loading the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web


def setup_api(app: web.Application, **kwargs: Any) -> web.Application:
    """Mount the API on ``app``; see :func:`vilokanam.origin.api.mount.setup_api`."""
    from vilokanam.origin.api.mount import setup_api as mount

    return mount(app, **kwargs)


__all__ = ["setup_api"]
