"""AMF0, the value encoding of RTMP commands and metadata (AMF0 spec, Adobe 2006).

Decoding returns plain Python values: ``float``, ``bool``, ``str``, ``dict``, ``list``,
``None``, plus :data:`UNDEFINED` and :class:`Date` for the two types that have no
faithful builtin equivalent. ECMA arrays decode to ``dict``; wrap a mapping in
:class:`EcmaArray` (or call :func:`encode_ecma_array`) to encode one. Malformed input raises
:class:`ProtocolError`; values that cannot be encoded raise ``TypeError``/``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from vilokanam.ingest.rtmp.errors import ProtocolError

NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE: Final = 0x07
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C
UNSUPPORTED: Final = 0x0D
XML_DOCUMENT: Final = 0x0F
TYPED_OBJECT: Final = 0x10
AVMPLUS_OBJECT: Final = 0x11

MAX_DEPTH: Final = 64
"""Nesting limit when decoding, so hostile input cannot exhaust the Python stack."""

_DOUBLE = struct.Struct(">d")
_DATE_TAIL = struct.Struct(">dh")


class Undefined:
    """AMF0's ``undefined``, distinct from ``null`` (which decodes to ``None``)."""

    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = Undefined()


@dataclass(frozen=True, slots=True)
class Date:
    """An AMF0 date: milliseconds since the Unix epoch (UTC) and the reserved time-zone field."""

    milliseconds: float
    timezone: int = 0


class EcmaArray(dict[str, Any]):
    """A mapping to be encoded as an ECMA array (what ``onMetaData`` traditionally uses)."""


# --------------------------------------------------------------------------- encoding


def encode(value: Any) -> bytes:
    """Encode one value."""
    out = bytearray()
    _encode_into(out, value, 0)
    return bytes(out)


def encode_all(values: Iterable[Any]) -> bytes:
    """Encode a sequence of values back to back, as a command or data message body."""
    out = bytearray()
    for value in values:
        _encode_into(out, value, 0)
    return bytes(out)


def encode_ecma_array(mapping: Mapping[str, Any]) -> bytes:
    """Encode a mapping as an ECMA array rather than an anonymous object."""
    return encode(EcmaArray(mapping))


def _encode_into(out: bytearray, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("AMF0 value nested too deeply")
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):
        out += bytes((BOOLEAN, 1 if value else 0))
    elif isinstance(value, int | float):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(STRING)
            out += len(raw).to_bytes(2, "big")
        else:
            out.append(LONG_STRING)
            out += len(raw).to_bytes(4, "big")
        out += raw
    elif isinstance(value, Date):
        out.append(DATE)
        out += _DATE_TAIL.pack(value.milliseconds, value.timezone)
    elif isinstance(value, EcmaArray):
        out.append(ECMA_ARRAY)
        out += len(value).to_bytes(4, "big")
        _encode_properties(out, value, depth)
    elif isinstance(value, Mapping):
        out.append(OBJECT)
        _encode_properties(out, value, depth)
    elif isinstance(value, list | tuple):
        out.append(STRICT_ARRAY)
        out += len(value).to_bytes(4, "big")
        for item in value:
            _encode_into(out, item, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def _encode_properties(out: bytearray, mapping: Mapping[str, Any], depth: int) -> None:
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"AMF0 object keys must be str, not {type(key).__name__}")
        raw = key.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("AMF0 object key longer than 65535 bytes")
        out += len(raw).to_bytes(2, "big")
        out += raw
        _encode_into(out, item, depth + 1)
    out += b"\x00\x00" + bytes((OBJECT_END,))


# --------------------------------------------------------------------------- decoding


def decode(data: bytes) -> list[Any]:
    """Decode every value in ``data`` (a whole command or data message body)."""
    decoder = _Decoder(data)
    values = []
    while decoder.pos < len(decoder.data):
        values.append(decoder.value(0))
    return values


def decode_value(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode one value at ``offset``; return it and the offset just past it."""
    decoder = _Decoder(data, offset)
    value = decoder.value(0)
    return value, decoder.pos


class _Decoder:
    """A cursor over one buffer; every read checks bounds so truncation is a ProtocolError."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = bytes(data)
        self.pos = pos

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise ProtocolError(f"AMF0 value truncated: need {size} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def text(self, size: int) -> str:
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"AMF0 string is not UTF-8: {exc}") from None

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError("AMF0 value nested too deeply")
        marker = self.uint(1)
        if marker == NUMBER:
            return _DOUBLE.unpack(self.take(8))[0]
        if marker == BOOLEAN:
            return self.uint(1) != 0
        if marker in (STRING, XML_DOCUMENT):
            return self.text(self.uint(2) if marker == STRING else self.uint(4))
        if marker == LONG_STRING:
            return self.text(self.uint(4))
        if marker == OBJECT:
            return self.properties(depth)
        if marker == TYPED_OBJECT:
            self.text(self.uint(2))  # the class name carries nothing RTMP ingest needs
            return self.properties(depth)
        if marker == ECMA_ARRAY:
            self.uint(4)  # a count hint only; the end marker is authoritative
            return self.properties(depth)
        if marker == STRICT_ARRAY:
            count = self.uint(4)
            if count > len(self.data) - self.pos:  # every element takes at least one byte
                raise ProtocolError(f"AMF0 strict array claims {count} elements")
            return [self.value(depth + 1) for _ in range(count)]
        if marker == NULL:
            return None
        if marker in (UNDEFINED_MARKER, UNSUPPORTED):
            return UNDEFINED
        if marker == DATE:
            milliseconds, timezone = _DATE_TAIL.unpack(self.take(_DATE_TAIL.size))
            return Date(milliseconds, timezone)
        if marker == OBJECT_END:
            raise ProtocolError("AMF0 object-end marker outside an object")
        raise ProtocolError(f"unsupported AMF0 type marker 0x{marker:02x}")

    def properties(self, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while True:
            key = self.text(self.uint(2))
            if not key and self.pos < len(self.data) and self.data[self.pos] == OBJECT_END:
                self.pos += 1
                return result
            result[key] = self.value(depth + 1)
