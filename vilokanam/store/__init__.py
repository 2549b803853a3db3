"""The SQL store: channels, hashed stream keys, stream sessions."""

from vilokanam.store.keys import SLUG_RULE, new_stream_key, valid_slug
from vilokanam.store.models import Channel, SessionState, StreamSession
from vilokanam.store.store import ChannelExists, ChannelNotFound, Store, StoreError

__all__ = [
    "SLUG_RULE",
    "Channel",
    "ChannelExists",
    "ChannelNotFound",
    "SessionState",
    "Store",
    "StoreError",
    "StreamSession",
    "new_stream_key",
    "valid_slug",
]
