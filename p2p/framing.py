"""Length-prefixed frames on a byte stream, for the direct request and ping protocols.

libp2p streams have no framing helper (LIBP2P_NOTES.md), so a frame is a u32 big-endian length
then the payload, and the length is checked against the caller's limit before anything is
allocated: a peer cannot make us buffer more than we agreed to. Kept apart from the libp2p
adapter (and free of libp2p imports) so the adapter stays one readable module and this part
can be tested on any stream that reads and writes bytes.
"""

from __future__ import annotations

import struct
from typing import Protocol

from p2p.transport import TransportError

FRAME_HEADER = struct.Struct(">I")


class FrameStream(Protocol):
    """What framing needs of a stream; libp2p's INetStream has this shape."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class FrameError(TransportError):
    """A peer's frame that was cut short or announced more bytes than the limit."""

    def __init__(self, reason: str, size: int, limit: int) -> None:
        super().__init__(f"bad frame ({reason}): {size} bytes, limit {limit}")
        self.reason, self.size, self.limit = reason, size, limit


async def write_frame(stream: FrameStream, payload: bytes) -> None:
    await stream.write(FRAME_HEADER.pack(len(payload)) + payload)


async def read_exactly(stream: FrameStream, size: int, limit: int, have: bytes = b"") -> bytes:
    """`size` bytes, starting with those already read (`have`)."""
    buf = bytearray(have)
    while len(buf) < size:
        chunk = await stream.read(size - len(buf))
        if not chunk:
            raise FrameError(f"stream ended after {len(buf)} bytes", size, limit)
        buf += chunk
    return bytes(buf)


async def read_frame_from(stream: FrameStream, limit: int, first: bytes) -> bytes:
    """The rest of a frame whose first bytes (`first`, up to 4 of them) were read already.

    A server that keeps a stream for request after request waits for a next request's first
    bytes with no deadline of its own, then reads the rest of it under the request deadline."""
    header = await read_exactly(stream, FRAME_HEADER.size, limit, have=first)
    (size,) = FRAME_HEADER.unpack(header)
    if size > limit:
        raise FrameError("announced size over the limit", size, limit)
    return await read_exactly(stream, size, limit)


async def read_frame(stream: FrameStream, limit: int) -> bytes:
    """A u32 big-endian length then the payload; the length is checked before any allocation."""
    return await read_frame_from(stream, limit, b"")
