"""The SQL store: channels, hashed keys, stream sessions, viewers; schema kept by migrations."""

from vilokanam.store.errors import (
    ChannelExists,
    ChannelNotFound,
    InvalidField,
    RecordingNotFound,
    SessionNotFound,
    StoreError,
    ViewerExists,
    ViewerNotFound,
)
from vilokanam.store.keys import SLUG_RULE, new_stream_key, valid_slug
from vilokanam.store.models import Channel, Recording, SessionState, StreamSession, Viewer
from vilokanam.store.store import UNSET, Store

__all__ = [
    "SLUG_RULE",
    "UNSET",
    "Channel",
    "ChannelExists",
    "ChannelNotFound",
    "InvalidField",
    "Recording",
    "RecordingNotFound",
    "SessionNotFound",
    "SessionState",
    "Store",
    "StoreError",
    "StreamSession",
    "Viewer",
    "ViewerExists",
    "ViewerNotFound",
    "new_stream_key",
    "valid_slug",
]
