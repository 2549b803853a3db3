"""SS58 addresses (Substrate): decode and validate, pure Python, no chain library needed.

An address is base58 (the Bitcoin alphabet) of ``prefix + public key + checksum``:

* the prefix is the address format (network) ``0..16383``: one byte for ``0..63``; two bytes for
  ``64..16383``, the first with bits ``01`` on top (a first byte of 128 or more is invalid);
* the public key (account id) is 32 bytes;
* the checksum is the first 2 bytes of ``blake2b-512(b"SS58PRE" + prefix + public key)``.

Only 32-byte account ids are accepted (what payouts and deposits need); the shorter account
indices and 33-byte keys of the spec are refused.
"""

from __future__ import annotations

import hashlib

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_VALUES = {char: value for value, char in enumerate(ALPHABET)}
_CONTEXT = b"SS58PRE"
ACCOUNT_ID_BYTES = 32
CHECKSUM_BYTES = 2
RESERVED_FORMATS = frozenset({46, 47})
"""Reserved by the spec for the ``ss58`` registry itself; never a network's addresses."""
MAX_FORMAT = 16383


def b58decode(text: str) -> bytes:
    """Base58 (Bitcoin alphabet) to bytes; each leading ``1`` is a leading zero byte."""
    number = 0
    for char in text:
        value = _VALUES.get(char)
        if value is None:
            raise ValueError(f"{char!r} is not a base58 character")
        number = number * 58 + value
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + body


def b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    while number:
        number, rest = divmod(number, 58)
        chars.append(ALPHABET[rest])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(chars))


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(_CONTEXT + payload, digest_size=64).digest()[:CHECKSUM_BYTES]


def _prefix(address_format: int) -> bytes:
    if not 0 <= address_format <= MAX_FORMAT:
        raise ValueError(f"address format {address_format} is not 0-{MAX_FORMAT}")
    if address_format < 64:
        return bytes([address_format])
    # 14 bits over two bytes: byte 0 = 01 + bits 2-7; byte 1 = bits 0-1 on top + bits 8-13.
    first = 0b0100_0000 | ((address_format >> 2) & 0b0011_1111)
    second = ((address_format & 0b11) << 6) | (address_format >> 8)
    return bytes([first, second])


def decode(address: str) -> tuple[int, bytes]:
    """``(address format, 32-byte public key)`` of an ss58 address; ``ValueError`` if it is not
    one (not base58, a bad prefix or length, a reserved format, a checksum mismatch)."""
    if not isinstance(address, str) or not 1 <= len(address) <= 64:
        raise ValueError("an ss58 address is 1-64 base58 characters")
    data = b58decode(address)
    if not data:
        raise ValueError("empty ss58 address")
    first = data[0]
    if first < 64:
        address_format, prefix_length = first, 1
    elif first < 128:
        if len(data) < 2:
            raise ValueError("truncated ss58 prefix")
        second = data[1]
        address_format = (
            ((first & 0b0011_1111) << 2) | (second >> 6) | ((second & 0b0011_1111) << 8)
        )
        prefix_length = 2
    else:
        raise ValueError(f"invalid ss58 prefix byte {first}")
    if address_format in RESERVED_FORMATS:
        raise ValueError(f"ss58 address format {address_format} is reserved")
    if len(data) != prefix_length + ACCOUNT_ID_BYTES + CHECKSUM_BYTES:
        raise ValueError(
            f"an ss58 account address holds {ACCOUNT_ID_BYTES} bytes of public key, "
            f"this one {len(data) - prefix_length - CHECKSUM_BYTES}"
        )
    payload, checksum = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
    if _checksum(payload) != checksum:
        raise ValueError("ss58 checksum mismatch")
    return address_format, payload[prefix_length:]


def encode(public_key: bytes, address_format: int = 42) -> str:
    """The ss58 address of a 32-byte public key in ``address_format``."""
    if len(public_key) != ACCOUNT_ID_BYTES:
        raise ValueError(f"a public key is {ACCOUNT_ID_BYTES} bytes, got {len(public_key)}")
    if address_format in RESERVED_FORMATS:
        raise ValueError(f"ss58 address format {address_format} is reserved")
    payload = _prefix(address_format) + bytes(public_key)
    return b58encode(payload + _checksum(payload))


def is_valid(address: str, address_format: int | None = None) -> bool:
    """Whether ``address`` is a valid ss58 account address (of ``address_format`` if given)."""
    try:
        found, _ = decode(address)
    except ValueError:
        return False
    return address_format is None or found == address_format
