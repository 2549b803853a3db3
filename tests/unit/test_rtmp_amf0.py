"""AMF0 encoding and decoding: byte layouts, round trips, and malformed input."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vilokanam.ingest.rtmp import ProtocolError, amf0


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (1.5, b"\x00" + struct.pack(">d", 1.5)),
        (True, b"\x01\x01"),
        (False, b"\x01\x00"),
        ("hi", b"\x02\x00\x02hi"),
        (None, b"\x05"),
        (amf0.UNDEFINED, b"\x06"),
        ({"a": 1.0}, b"\x03\x00\x01a\x00" + struct.pack(">d", 1.0) + b"\x00\x00\x09"),
        ([True, None], b"\x0a\x00\x00\x00\x02\x01\x01\x05"),
        (amf0.Date(1e12, 0), b"\x0b" + struct.pack(">dh", 1e12, 0)),
        (
            amf0.EcmaArray(x=True),
            b"\x08\x00\x00\x00\x01\x00\x01x\x01\x01\x00\x00\x09",
        ),
    ],
)
def test_encoding_layout_and_round_trip(value: Any, encoded: bytes) -> None:
    assert amf0.encode(value) == encoded
    decoded = amf0.decode(encoded)
    assert decoded == [dict(value) if isinstance(value, amf0.EcmaArray) else value]


def test_int_encodes_as_number() -> None:
    assert amf0.decode(amf0.encode(3)) == [3.0]


def test_long_string_above_64k() -> None:
    text = "x" * 70_000
    encoded = amf0.encode(text)
    assert encoded[0] == amf0.LONG_STRING
    assert int.from_bytes(encoded[1:5], "big") == 70_000
    assert amf0.decode(encoded) == [text]


def test_ecma_array_decodes_to_dict() -> None:
    encoded = amf0.encode_ecma_array({"duration": 0.0, "stereo": True})
    value = amf0.decode(encoded)[0]
    assert type(value) is dict
    assert value == {"duration": 0.0, "stereo": True}


def test_ecma_array_count_is_only_a_hint() -> None:
    # Encoders are known to write a wrong count; the end marker decides.
    encoded = b"\x08\x00\x00\x00\x07\x00\x01k\x05\x00\x00\x09"
    assert amf0.decode(encoded) == [{"k": None}]


def test_command_body_decodes_all_values() -> None:
    body = amf0.encode_all(["connect", 1.0, {"app": "live"}, None])
    assert amf0.decode(body) == ["connect", 1.0, {"app": "live"}, None]
    value, offset = amf0.decode_value(body, 0)
    assert (value, offset) == ("connect", 10)


def test_typed_object_and_xml_document_decode() -> None:
    typed = b"\x10\x00\x03Foo\x00\x01a\x05\x00\x00\x09"
    assert amf0.decode(typed) == [{"a": None}]
    assert amf0.decode(b"\x0f\x00\x00\x00\x03<a>") == ["<a>"]


def test_nan_round_trips() -> None:
    assert math.isnan(amf0.decode(amf0.encode(math.nan))[0])


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x02",  # truncated number
        b"\x02\x00\x05ab",  # truncated string
        b"\x03\x00\x01a\x05",  # object without end marker
        b"\x09",  # stray object end
        b"\x07\x00\x01",  # references are not supported
        b"\x11\x06",  # AMF3 switch
        b"\xff",  # unknown marker
        b"\x02\x00\x02\xff\xfe",  # invalid UTF-8
        b"\x0a\xff\xff\xff\xff\x05",  # strict array count larger than the input
        b"\x0a\x00\x00\x00\x01" * 100,  # nested too deeply
    ],
)
def test_malformed_input_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        amf0.decode(data)


def test_unencodable_values() -> None:
    with pytest.raises(TypeError):
        amf0.encode(object())
    with pytest.raises(TypeError):
        amf0.encode({1: "a"})


def test_undefined_is_a_falsy_singleton() -> None:
    assert amf0.Undefined() is amf0.UNDEFINED
    assert not amf0.UNDEFINED
    assert repr(amf0.UNDEFINED) == "UNDEFINED"


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
_scalars = (
    st.floats(allow_nan=False)
    | st.booleans()
    | _text
    | st.none()
    | st.just(amf0.UNDEFINED)
    | st.builds(
        amf0.Date,
        st.floats(allow_nan=False),
        st.integers(min_value=-(2**15), max_value=2**15 - 1),
    )
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=30,
)


@given(st.lists(_values, max_size=5))
def test_encode_decode_identity(values: list[Any]) -> None:
    assert amf0.decode(amf0.encode_all(values)) == values


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        amf0.decode(data)
