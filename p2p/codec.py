"""Canonical, strict, bounded msgpack: the one place bytes become values and back.

Signed data must have exactly one encoding, or two honest nodes could disagree on what was
signed. We therefore allow only unsigned/signed ints, byte strings and arrays (no maps, no
floats, no text type: text travels as UTF-8 bytes), and reject any input that does not
re-encode to the very same bytes. Limits on size and nesting are checked before and after
msgpack so hostile input costs bounded work.
"""

from __future__ import annotations

from typing import TypeAlias

import msgpack

from p2p.errors import DecodeError

Value: TypeAlias = int | bytes | list["Value"]

FRAME_BYTES_MAX = 256 * 1024
"""Default cap on one encoded frame; callers pass their own where it differs."""
DEPTH_MAX = 8
"""Arrays nest at most this deep; our deepest record uses 4."""

# msgpack signals bad input with these; TypeError is deliberately absent so that a wrong
# call of ours still crashes loudly instead of reading as a peer's fault.
_UNPACK_ERRORS = (ValueError, OverflowError, msgpack.UnpackException)


_PACKER = msgpack.Packer(use_bin_type=True)
"""`msgpack.packb(value, use_bin_type=True)` builds a Packer per call, which costs ten times
what packing a number does; this one is reused. Its `pack` is one C call that empties its
buffer after every call, a failed one included, and runs whole (under the GIL: our values
need no Python callbacks; msgpack locks it where there is no GIL), so sharing it, threads
included, gives the very same bytes as `packb`."""


def pack(value: Value | tuple[Value, ...]) -> bytes:
    """Encode a canonical value. Anything else is our bug and raises TypeError."""
    _check_shape(value, DEPTH_MAX, local=True)
    return _PACKER.pack(value)  # type: ignore[no-any-return]


def pack_array(items: list[bytes]) -> bytes:
    """The encoding of an array whose items are already encoded (each by `pack`): msgpack
    writes an array as its length header and then each item's own bytes, so this is exactly
    `pack` of the array, without packing again the items a caller keeps from one encoding to
    the next (a node signs the same GPUs, region and addresses every announcement)."""
    n = len(items)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(items)


def unpack(data: bytes, *, max_bytes: int = FRAME_BYTES_MAX, max_depth: int = DEPTH_MAX) -> Value:
    """Decode bytes from a peer; raise DecodeError for anything but one canonical value."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise DecodeError("empty frame")
    if size > max_bytes:
        raise DecodeError(f"frame of {size} bytes exceeds the limit of {max_bytes}")
    try:
        value = msgpack.unpackb(
            bytes(data),
            raw=True,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=0,
            max_ext_len=0,
        )
    except _UNPACK_ERRORS as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from None
    _check_shape(value, max_depth, local=False)
    if _PACKER.pack(value) != bytes(data):
        raise DecodeError("non-canonical encoding (the same value has a shorter or binary form)")
    return value  # type: ignore[no-any-return]


def _check_shape(value: object, depth_left: int, *, local: bool) -> None:
    """Only ints, bytes and arrays, nested at most `depth_left` deep.

    It runs over every value packed or unpacked (a block of a thousand transactions is tens
    of thousands of items), so the common cases go first: exact ints and bytes inside an
    array cost one type test each, and only what is not plainly allowed takes the general
    path below."""
    kind = type(value)
    if kind is int or kind is bytes:
        return
    if kind is list or (local and kind is tuple):
        if depth_left <= 0:
            raise (TypeError if local else DecodeError)("arrays nested too deep")
        for item in value:  # type: ignore[attr-defined]
            item_kind = type(item)
            if item_kind is not int and item_kind is not bytes:
                _check_shape(item, depth_left - 1, local=local)
        return
    _check_shape_general(value, depth_left, local=local)


def _check_shape_general(value: object, depth_left: int, *, local: bool) -> None:
    """`_check_shape` for what is not exactly an int, bytes or array: subclasses (an IntEnum
    from our own code is an int) pass, bool and every other type are refused."""
    error: type[Exception] = TypeError if local else DecodeError
    # Tuples are accepted from our own code only: from the wire, msgpack yields lists, and the
    # one tuple it can yield is an ExtType (a zero-length ext passes max_ext_len=0).
    sequence = list | tuple if local else list
    if isinstance(value, bool) or not isinstance(value, int | bytes | sequence):
        raise error(f"type {type(value).__name__} is not allowed on the wire")
    if isinstance(value, list | tuple):
        if depth_left <= 0:
            raise error("arrays nested too deep")
        for item in value:
            _check_shape(item, depth_left - 1, local=local)
