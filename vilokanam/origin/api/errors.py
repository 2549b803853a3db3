"""API errors as JSON ``{"error": code, "detail": ...}`` with the right HTTP status."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from vilokanam.store import (
    ChannelExists,
    ChannelNotFound,
    InvalidField,
    SessionNotFound,
    StoreError,
)
from vilokanam.store.errors import ViewerExists, ViewerNotFound


class ApiError(Exception):
    """Raised by handlers; becomes an error response."""

    def __init__(self, status: int, error: str, detail: Any, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def error_response(
    status: int, error: str, detail: Any, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def field_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as ``[{field, message}]`` with dotted field paths (``ladder.0.height``)."""
    issues = []
    for item in exc.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        else:
            message = item["msg"].removeprefix("Value error, ")
        issues.append({"field": (prefix + path) or "body", "message": message})
    return issues


def validation_error(issues: list[dict[str, str]]) -> ApiError:
    return ApiError(422, "validation_error", issues)


def from_exception(exc: Exception) -> ApiError | None:
    """The API error for a known exception, or None (an unexpected one: 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return validation_error(field_errors(exc))
    if isinstance(exc, ChannelNotFound | SessionNotFound | ViewerNotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, ChannelExists | ViewerExists):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, InvalidField):
        return validation_error([{"field": exc.field or "body", "message": str(exc)}])
    if isinstance(exc, StoreError):
        return ApiError(400, "bad_request", str(exc))
    return None
