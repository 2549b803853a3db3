"""The store's errors: all ``StoreError`` (a ``ValueError``), so callers can catch one type."""

from __future__ import annotations


class StoreError(ValueError):
    """A request the store refuses (bad value, duplicate, unknown channel or session)."""


class ChannelExists(StoreError):
    """A channel with this slug already exists."""


class ChannelNotFound(StoreError):
    """No channel with this slug (or id)."""


class SessionNotFound(StoreError):
    """No stream session with this id."""


class RecordingNotFound(SessionNotFound):
    """No recording (VOD) for this stream session id; a VOD's id is its session's id."""


class ViewerExists(StoreError):
    """A viewer with this name (or deposit address) already exists."""


class ViewerNotFound(StoreError):
    """No viewer with this name (or id)."""


class InvalidField(StoreError):
    """A field's value breaks its rule; ``field`` names it and the message says the rule."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
