"""The single exception type the RTMP core raises for bad input from the peer."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent bytes that are not RTMP this server can interpret.

    The connection cannot continue after this: the chunk stream has no resynchronisation
    points, so the only safe reaction is to close the socket.
    """
