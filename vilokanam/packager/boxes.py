"""Just enough ISO BMFF box walking to read init segments and fragments."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

CONTAINERS = frozenset({"moov", "trak", "mdia", "minf", "stbl", "moof", "traf", "mvex", "edts"})


@dataclass(frozen=True)
class Box:
    type: str
    offset: int
    size: int
    header: int

    @property
    def payload(self) -> int:
        return self.offset + self.header

    @property
    def end(self) -> int:
        return self.offset + self.size


def iter_boxes(data: bytes | bytearray, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The boxes laid side by side in ``data[start:end]``."""
    end = len(data) if end is None else end
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            raise ValueError(f"malformed box {kind!r} at offset {offset}")
        yield Box(kind.decode("latin-1"), offset, size, header)
        offset += size


def find_boxes(
    data: bytes | bytearray, path: str, start: int = 0, end: int | None = None
) -> list[Box]:
    """Every box at ``path`` ("moof/traf/tfdt"), descending through the named containers."""
    head, _, rest = path.partition("/")
    found: list[Box] = []
    for box in iter_boxes(data, start, end):
        if box.type != head:
            continue
        if rest:
            found.extend(find_boxes(data, rest, box.payload, box.end))
        else:
            found.append(box)
    return found


def decode_times(data: bytes) -> list[int]:
    """baseMediaDecodeTime of each ``traf`` in order (track timescale units)."""
    times = []
    for box in find_boxes(data, "moof/traf/tfdt"):
        version = data[box.payload]
        fmt = ">Q" if version == 1 else ">I"
        (value,) = struct.unpack_from(fmt, data, box.payload + 4)
        times.append(value)
    return times
