"""The canonical msgpack codec: one encoding per value, and nothing but DecodeError for bad
bytes (DESIGN.md principle 5)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p import codec
from p2p.errors import DecodeError
from tests.strategies import mutated

INT_MIN = -(2**63)
UINT_MAX = 2**64 - 1

ints = st.integers(INT_MIN, UINT_MAX)
blobs = st.binary(max_size=300)  # crosses the fixed -> bin8 -> bin16 boundaries


def values(depth: int = codec.DEPTH_MAX) -> st.SearchStrategy[codec.Value]:
    """Any wire value nested at most `depth` arrays deep."""
    leaf: st.SearchStrategy[codec.Value] = st.one_of(ints, blobs)
    if depth == 0:
        return leaf
    return st.one_of(leaf, st.lists(st.deferred(lambda: values(depth - 1)), max_size=5))


def decode_only_decode_error(decode: Callable[[bytes], Any], data: bytes) -> Any:
    """Decode `data`; a DecodeError gives None, and any other exception fails the test."""
    try:
        return decode(data)
    except DecodeError:
        return None
    except Exception as exc:  # the point: anything but DecodeError fails
        pytest.fail(f"{decode.__name__}({data.hex()}) raised {type(exc).__name__}: {exc}")


def nest(depth: int) -> bytes:
    """`depth` arrays of one item around a 0: [[...[0]...]]."""
    return b"\x91" * depth + b"\x00"


# ---------------------------------------------------------------------------------------------
# Round trips and canonical form


@settings(max_examples=300, deadline=None)
@given(values())
def test_round_trip_is_exact(value: codec.Value) -> None:
    data = codec.pack(value)
    assert codec.unpack(data) == value
    assert codec.pack(codec.unpack(data)) == data


@settings(max_examples=100, deadline=None)
@given(st.lists(ints | blobs, max_size=8))
def test_tuples_pack_like_lists(items: list[codec.Value]) -> None:
    assert codec.pack(tuple(items)) == codec.pack(items)


@pytest.mark.parametrize(
    ("value", "hex_form"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "cc80"),
        (255, "ccff"),
        (256, "cd0100"),
        (65535, "cdffff"),
        (65536, "ce00010000"),
        (2**32, "cf0000000100000000"),
        (UINT_MAX, "cfffffffffffffffff"),
        (-1, "ff"),
        (-32, "e0"),
        (-33, "d0df"),
        (-128, "d080"),
        (-129, "d1ff7f"),
        (INT_MIN, "d38000000000000000"),
        (b"", "c400"),
        (b"ab", "c4026162"),
        (b"x" * 256, "c50100" + "78" * 256),
        ([], "90"),
        ([1, [b""]], "920191c400"),
        (list(range(16)), "dc0010" + bytes(range(16)).hex()),
    ],
)
def test_known_encodings(value: codec.Value, hex_form: str) -> None:
    """The shortest form, bytes as msgpack bin: what docs/PROTOCOL.md promises."""
    assert codec.pack(value).hex() == hex_form
    assert codec.unpack(bytes.fromhex(hex_form)) == value


def int_encodings(n: int) -> list[bytes]:
    """Every msgpack encoding of the integer `n`, canonical or not."""
    forms: list[bytes] = []
    if 0 <= n <= 0x7F or -32 <= n < 0:
        forms.append(struct.pack("b" if n < 0 else "B", n))
    for tag, fmt, lo, hi in [
        (0xCC, ">B", 0, 2**8 - 1), (0xCD, ">H", 0, 2**16 - 1),
        (0xCE, ">I", 0, 2**32 - 1), (0xCF, ">Q", 0, 2**64 - 1),
        (0xD0, ">b", -(2**7), 2**7 - 1), (0xD1, ">h", -(2**15), 2**15 - 1),
        (0xD2, ">i", -(2**31), 2**31 - 1), (0xD3, ">q", -(2**63), 2**63 - 1),
    ]:
        if lo <= n <= hi:
            forms.append(bytes([tag]) + struct.pack(fmt, n))
    return forms


@settings(max_examples=300, deadline=None)
@given(ints)
def test_only_the_shortest_int_encoding_is_accepted(n: int) -> None:
    accepted = [f for f in int_encodings(n) if decode_only_decode_error(codec.unpack, f) == n]
    assert accepted == [codec.pack(n)]


def blob_encodings(data: bytes) -> list[bytes]:
    """Every bin and str encoding of `data` (str is the text type: never canonical here)."""
    n = len(data)
    forms = [bytes([0xC4, n]) + data] if n < 2**8 else []
    forms.append(b"\xc5" + struct.pack(">H", n) + data)
    forms.append(b"\xc6" + struct.pack(">I", n) + data)
    if n < 32:
        forms.append(bytes([0xA0 | n]) + data)
    if n < 2**8:
        forms.append(bytes([0xD9, n]) + data)
    forms.append(b"\xda" + struct.pack(">H", n) + data)
    forms.append(b"\xdb" + struct.pack(">I", n) + data)
    return forms


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_only_the_shortest_bin_encoding_is_accepted(data: bytes) -> None:
    accepted = [f for f in blob_encodings(data) if decode_only_decode_error(codec.unpack, f)
                is not None]
    assert accepted == [codec.pack(data)]


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("dc0001") + b"\x01",  # array16 holding one item
        bytes.fromhex("dd00000001") + b"\x01",  # array32 holding one item
        bytes.fromhex("dc0000"),  # empty array16
    ],
)
def test_wide_array_headers_are_not_canonical(data: bytes) -> None:
    with pytest.raises(DecodeError, match="non-canonical"):
        codec.unpack(data)


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("cd0001"),  # 1 as uint16
        bytes.fromhex("cc05"),  # 5 as uint8
        bytes.fromhex("d005"),  # 5 as int8
        bytes.fromhex("d0ff"),  # -1 as int8
        bytes.fromhex("cf00000000000000ff"),  # 255 as uint64
        bytes.fromhex("d3ffffffffffffffff"),  # -1 as int64
    ],
)
def test_non_canonical_ints_are_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError, match="non-canonical"):
        codec.unpack(data)


# ---------------------------------------------------------------------------------------------
# Types that are not on the wire


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("float32", bytes.fromhex("ca3f800000")),
        ("float64", bytes.fromhex("cb3ff0000000000000")),
        ("empty map", bytes.fromhex("80")),
        ("fixmap", bytes.fromhex("810102")),
        ("map16", bytes.fromhex("de00010102")),
        ("empty map16", bytes.fromhex("de0000")),
        ("fixstr", bytes.fromhex("a161")),
        ("empty fixstr", bytes.fromhex("a0")),
        ("str8", bytes.fromhex("d90161")),
        ("nil", bytes.fromhex("c0")),
        ("true", bytes.fromhex("c3")),
        ("false", bytes.fromhex("c2")),
        ("never used", bytes.fromhex("c1")),
        ("fixext1", bytes.fromhex("d40100")),
        ("fixext16", bytes.fromhex("d801") + bytes(16)),
        ("ext8", bytes.fromhex("c7020100ff")),
        ("ext8 of zero length", bytes.fromhex("c70001")),
        ("ext16 of zero length", bytes.fromhex("c8000001")),
        ("timestamp32", bytes.fromhex("d6ff00000000")),
        ("timestamp of zero length", bytes.fromhex("c700ff")),
        ("float inside an array", bytes.fromhex("9201ca3f800000")),
        ("nil inside an array", bytes.fromhex("92c0c0")),
        ("empty map inside an array", bytes.fromhex("9180")),
        ("zero-length ext inside an array", bytes.fromhex("9101c70001")),
    ],
)
def test_types_outside_the_subset_are_rejected(name: str, data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.unpack(data)


@pytest.mark.parametrize(
    "value",
    [1.0, {}, {1: 2}, "text", None, True, False, bytearray(b"x"), [1, 2.5], [[{}]], 2**64,
     -(2**63) - 1],
    ids=repr,
)
def test_pack_refuses_values_outside_the_subset(value: object) -> None:
    """Packing something else is our own bug, so it is a TypeError (or OverflowError for
    ints msgpack cannot hold), never a DecodeError that would read as a peer's fault."""
    with pytest.raises((TypeError, OverflowError)) as info:
        codec.pack(value)  # type: ignore[arg-type]
    assert not isinstance(info.value, DecodeError)


# ---------------------------------------------------------------------------------------------
# Limits


def test_frame_size_limit() -> None:
    value = b"x" * 100
    data = codec.pack(value)
    assert codec.unpack(data, max_bytes=len(data)) == value
    with pytest.raises(DecodeError, match="exceeds the limit"):
        codec.unpack(data, max_bytes=len(data) - 1)


def test_default_frame_limit_rejects_oversize_before_parsing() -> None:
    big = codec.pack(b"x" * codec.FRAME_BYTES_MAX)  # valid msgpack, just too large
    assert len(big) > codec.FRAME_BYTES_MAX
    with pytest.raises(DecodeError, match="exceeds the limit"):
        codec.unpack(big)


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("c6ffffffff"),  # bin32 claiming 4 GiB
        bytes.fromhex("ddffffffff"),  # array32 claiming 4 billion items
        bytes.fromhex("dbffffffff"),  # str32 claiming 4 GiB
        bytes.fromhex("dfffffffff"),  # map32 claiming 4 billion pairs
        bytes.fromhex("c9ffffffff01"),  # ext32 claiming 4 GiB
    ],
)
def test_huge_declared_lengths_are_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.unpack(data)


def test_depth_cap() -> None:
    assert codec.unpack(nest(codec.DEPTH_MAX)) is not None
    with pytest.raises(DecodeError, match="too deep"):
        codec.unpack(nest(codec.DEPTH_MAX + 1))
    with pytest.raises(DecodeError, match="too deep"):
        codec.unpack(nest(3), max_depth=2)
    with pytest.raises(TypeError, match="too deep"):  # packing one level more is our bug
        codec.pack([codec.unpack(nest(codec.DEPTH_MAX))])


@pytest.mark.parametrize("depth", [100, 5000, 100_000])
def test_very_deep_nesting_is_a_decode_error(depth: int) -> None:
    with pytest.raises(DecodeError):
        codec.unpack(b"\x91" * depth)  # incomplete as well as too deep
    with pytest.raises(DecodeError):
        codec.unpack(nest(depth))


@pytest.mark.parametrize("data", [b"", bytes.fromhex("0000"), bytes.fromhex("9100ff"),
                                  bytes.fromhex("c40161") + b"\x00"])
def test_empty_input_and_trailing_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.unpack(data)


@pytest.mark.parametrize("data", [bytes.fromhex("92"), bytes.fromhex("c405616263"),
                                  bytes.fromhex("cd01"), bytes.fromhex("9201")])
def test_truncated_input_is_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.unpack(data)


def test_non_bytes_input_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        codec.unpack("00")  # type: ignore[arg-type]


def test_bytearray_and_memoryview_input_are_read_as_bytes() -> None:
    data = codec.pack([1, b"ab"])
    assert codec.unpack(bytearray(data)) == [1, b"ab"]  # type: ignore[arg-type]
    assert codec.unpack(memoryview(data)) == [1, b"ab"]  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Hostile bytes: DecodeError and nothing else


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    decoded = decode_only_decode_error(codec.unpack, data)
    if decoded is not None:  # it happened to be canonical: then it must re-encode exactly
        assert codec.pack(decoded) == data


@settings(max_examples=300, deadline=None)
@given(st.data(), values(4))
def test_mutated_encodings_raise_only_decode_error(data: st.DataObject,
                                                   value: codec.Value) -> None:
    bad = data.draw(mutated(codec.pack(value)))
    decoded = decode_only_decode_error(codec.unpack, bad)
    if decoded is not None:
        assert codec.pack(decoded) == bad
        assert decoded != value  # a different encoding can never be the same value
