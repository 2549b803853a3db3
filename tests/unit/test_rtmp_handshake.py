"""The server handshake: plain echo, and the digest ("complex") variant Flash clients use."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from vilokanam.ingest.rtmp import ProtocolError
from vilokanam.ingest.rtmp.handshake import PACKET_SIZE, ServerHandshake, build_c1

# Independent of the module under test: the well-known key material, spelled out.
KEY_TAIL = bytes.fromhex("f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae")
FP_KEY = b"Genuine Adobe Flash Player 001" + KEY_TAIL
FMS_KEY = b"Genuine Adobe Flash Media Server 001" + KEY_TAIL


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _offset(packet: bytes, scheme: int) -> int:
    base = (8, 772)[scheme]
    return base + 4 + sum(packet[base : base + 4]) % 728


def _digest_ok(packet: bytes, scheme: int, key: bytes) -> bytes | None:
    off = _offset(packet, scheme)
    digest = packet[off : off + 32]
    return digest if _hmac(key, packet[:off] + packet[off + 32 :]) == digest else None


def _run(c0c1: bytes) -> tuple[ServerHandshake, bytes]:
    hs = ServerHandshake()
    assert hs.receive_data(c0c1) == b""
    reply = hs.data_to_send()
    assert len(reply) == 1 + 2 * PACKET_SIZE and reply[0] == 3
    return hs, reply


def test_plain_handshake_echoes_c1() -> None:
    c1 = build_c1(None)
    hs, reply = _run(b"\x03" + c1)
    s1, s2 = reply[1 : 1 + PACKET_SIZE], reply[1 + PACKET_SIZE :]
    assert s1[4:8] == bytes(4)  # zero version: no digest to look for
    assert s2 == c1
    assert hs.digest_scheme is None and not hs.complete
    assert hs.receive_data(bytes(PACKET_SIZE) + b"next") == b"next"
    assert hs.complete


@pytest.mark.parametrize("scheme", [0, 1])
def test_complex_handshake_signs_s1_and_s2(scheme: int) -> None:
    c1 = build_c1(scheme)
    client_digest = _digest_ok(c1, scheme, FP_KEY[:30])
    assert client_digest is not None  # the test client is itself valid
    hs, reply = _run(b"\x03" + c1)
    assert hs.digest_scheme == scheme
    s1, s2 = reply[1 : 1 + PACKET_SIZE], reply[1 + PACKET_SIZE :]
    assert s1[4] >= 3  # ffmpeg only verifies servers announcing version >= 3
    assert _digest_ok(s1, scheme, FMS_KEY[:36]) is not None
    signature = _hmac(_hmac(FMS_KEY, client_digest), s2[:-32])
    assert s2[-32:] == signature


def test_c1_with_a_broken_digest_gets_the_plain_handshake() -> None:
    c1 = bytearray(build_c1(0))
    c1[_offset(c1, 0)] ^= 0xFF
    hs, reply = _run(b"\x03" + bytes(c1))
    assert hs.digest_scheme is None
    assert reply[1 + PACKET_SIZE :] == bytes(c1)


def test_byte_at_a_time_and_c2_content_is_not_checked() -> None:
    data = b"\x03" + build_c1(1) + b"\xaa" * PACKET_SIZE + b"rest"
    hs = ServerHandshake()
    tail = b""
    for i in range(len(data)):
        tail += hs.receive_data(data[i : i + 1])
    assert hs.complete and tail == b"rest"
    assert len(hs.data_to_send()) == 1 + 2 * PACKET_SIZE
    assert hs.receive_data(b"more") == b"more"


def test_old_version_byte_is_answered_with_3() -> None:
    _, reply = _run(b"\x00" + build_c1(None))
    assert reply[0] == 3


@pytest.mark.parametrize("first", [b"\x06", b"\x08", b"G", b"\x16"])
def test_unsupported_first_byte(first: bytes) -> None:
    with pytest.raises(ProtocolError):
        ServerHandshake().receive_data(first + b"ET / HTTP/1.1\r\n")
