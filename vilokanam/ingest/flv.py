"""FLV framing of RTMP media messages: what a transcode worker reads from its pipe.

RTMP audio/video/data message bodies are FLV tag bodies already; this module only adds the
file header and the 11-byte tag headers with back-pointers (FLV spec v10, annex E).
"""

from __future__ import annotations

import struct

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

FLAG_AUDIO = 0x04
FLAG_VIDEO = 0x01


def file_header(has_audio: bool = True, has_video: bool = True) -> bytes:
    """The 9-byte FLV header followed by PreviousTagSize0."""
    flags = (FLAG_AUDIO if has_audio else 0) | (FLAG_VIDEO if has_video else 0)
    return b"FLV\x01" + bytes([flags]) + struct.pack(">I", 9) + b"\x00\x00\x00\x00"


def tag(tag_type: int, timestamp_ms: int, body: bytes) -> bytes:
    """One FLV tag plus its PreviousTagSize trailer."""
    if len(body) >= 1 << 24:
        raise ValueError(f"FLV tag body of {len(body)} bytes exceeds 16 MiB")
    timestamp_ms &= 0xFFFFFFFF
    header = (
        bytes([tag_type])
        + len(body).to_bytes(3, "big")
        + (timestamp_ms & 0xFFFFFF).to_bytes(3, "big")
        + bytes([timestamp_ms >> 24])
        + b"\x00\x00\x00"
    )
    return header + body + struct.pack(">I", len(header) + len(body))


def is_sequence_header(tag_type: int, body: bytes) -> bool:
    """AVC/HEVC decoder configuration or AAC AudioSpecificConfig: needed to restart a decoder."""
    if tag_type == TAG_VIDEO and len(body) >= 2:
        if body[0] & 0x80:  # enhanced RTMP: packet type in the low nibble, 0 = sequence start
            return body[0] & 0x0F == 0
        return body[0] & 0x0F in (7, 12) and body[1] == 0
    if tag_type == TAG_AUDIO and len(body) >= 2:
        return body[0] >> 4 == 10 and body[1] == 0
    return False


def is_keyframe(body: bytes) -> bool:
    """True for a video tag that starts a GOP (frame type 1)."""
    return bool(body) and (body[0] >> 4) & 0x07 == 1
