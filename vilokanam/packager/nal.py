"""H.264 NAL unit framing: Annex B (start codes) and length-prefixed (``avcC`` / MP4 samples)."""

from __future__ import annotations

import struct


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (3- or 4-byte start codes)."""
    units: list[bytes] = []
    start = _next_start_code(data, 0)
    while start is not None:
        following = _next_start_code(data, start[1])
        end = following[0] if following is not None else len(data)
        if end > start[1]:
            units.append(data[start[1] : end])
        start = following
    return units


def annexb_to_length_prefixed(data: bytes) -> bytes:
    """An Annex B access unit as MP4 sample data: each NAL unit behind a 4-byte size."""
    return b"".join(struct.pack(">I", len(unit)) + unit for unit in split_annexb(data))


def remove_emulation_prevention(nal: bytes) -> bytes:
    """NAL unit payload with the 0x03 emulation-prevention bytes (after 00 00) removed."""
    out = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _next_start_code(data: bytes, offset: int) -> tuple[int, int] | None:
    """(where the start code begins, where the NAL unit after it begins), or None."""
    position = data.find(b"\x00\x00\x01", offset)
    if position < 0:
        return None
    begin = position - 1 if position > offset and data[position - 1] == 0 else position
    return begin, position + 3
