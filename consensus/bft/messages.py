"""What committee members and followers say to each other over direct streams.

Consensus traffic never rides gossip (py-libp2p's gossip drops silently under load): every
message is one framed request on a direct stream, acknowledged by the receiver, and the
core re-sends what still matters on its own timers, so a dropped frame costs time, never
safety. Frames on `PROTOCOL_CONSENSUS` are `[tag, payload]`:

| tag | payload | meaning |
|---|---|---|
| 1 | a signed `Vote` envelope | prevotes and precommits |
| 4 | `[Proposal envelope, block, [prevotes]]` | the proposal, its block, its POL prevotes |
| 5 | `Relay` | statements of others we accepted at this height, passed on once a second |
| 6 | `[frame, ...]` | frames queued for one peer, sent as one request (no batch inside) |

A block proposed again (a proof-of-lock round) travels with the prevotes of that round, so a
member that missed them can still accept it. Relaying (tag 5) is how equivocation is caught
and how votes cross a link that is down: a member that signs two different votes for one
slot sends each to different members, and only a member that holds both can prove it.
Identical bytes are recognised before any signature check, so honest relays cost bandwidth,
not CPU.
| 2 | `TxBatch` | transactions a member admitted, for whoever proposes next |
| 3 | `BlockBatch` | committed blocks with their certificates, pushed to a lagging member |

`PROTOCOL_SYNC` carries `SyncRequest` -> `BlockBatch` for block sync; `PROTOCOL_TX` carries
one transaction -> `TxReply` for clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.bft.block import BLOCK_BYTES_MAX, BLOCK_TXS_MAX, TX_BYTES_CAP
from consensus.bft.votes import STATEMENT_BYTES_MAX
from p2p import codec
from p2p.errors import DecodeError
from p2p.wire import Blob, Nested, Seq, Struct, Text, UInt, wire_field

PROTOCOL_CONSENSUS = "/gpumesh/consensus/1.0.0"
PROTOCOL_SYNC = "/gpumesh/sync/1.0.0"
PROTOCOL_TX = "/gpumesh/tx/1.0.0"
FRAME_BYTES_MAX = BLOCK_BYTES_MAX + 64 * 1024
SYNC_BLOCKS_MAX = 256
RELAY_MAX = 4_096
TAG_VOTE, TAG_TXS, TAG_BLOCKS, TAG_PROPOSAL, TAG_RELAY, TAG_BATCH = 1, 2, 3, 4, 5, 6
TAGS = (TAG_VOTE, TAG_TXS, TAG_BLOCKS, TAG_PROPOSAL, TAG_RELAY, TAG_BATCH)
BATCH_FRAMES_MAX = 256


@dataclass(frozen=True)
class TxBatch(Struct):
    txs: tuple[bytes, ...] = wire_field(Seq(Blob(TX_BYTES_CAP), BLOCK_TXS_MAX))


@dataclass(frozen=True)
class Relay(Struct):
    statements: tuple[bytes, ...] = wire_field(Seq(Blob(STATEMENT_BYTES_MAX), RELAY_MAX))


@dataclass(frozen=True)
class CommittedBlock(Struct):
    """A block's canonical bytes with its certificate's canonical bytes."""

    block: bytes = wire_field(Blob(BLOCK_BYTES_MAX))
    cert: bytes = wire_field(Blob(256 * 1024))


@dataclass(frozen=True)
class BlockBatch(Struct):
    blocks: tuple[CommittedBlock, ...] = wire_field(Seq(Nested(CommittedBlock), SYNC_BLOCKS_MAX))
    head: int = wire_field(UInt())
    """The sender's own committed height, so the receiver knows how far it still has to go."""


@dataclass(frozen=True)
class SyncRequest(Struct):
    start: int = wire_field(UInt())
    end: int = wire_field(UInt())

    def invariant_violation(self) -> str | None:
        if not 1 <= self.start <= self.end:
            return f"bad range {self.start}..{self.end}"
        return None


@dataclass(frozen=True)
class TxReply(Struct):
    """What a client is told about its transaction: accepted into the mempool, or why not."""

    accepted: int = wire_field(UInt(1))
    code: str = wire_field(Text(64))
    reason: str = wire_field(Text(400))


def encode_frame(tag: int, payload: bytes) -> bytes:
    return codec.pack([tag, payload])


FRAME_NAMES = {TAG_VOTE: "vote", TAG_TXS: "txs", TAG_BLOCKS: "blocks",
               TAG_PROPOSAL: "proposal", TAG_RELAY: "relay", TAG_BATCH: "batch"}  # fmt: skip


def frame_tag(frame: bytes) -> int:
    """The tag of a frame made by `encode_frame`, read from its first two bytes (msgpack's
    two-item array marker, then the tag as a positive fixint) without unpacking the payload:
    for counting what a node sends. -1 for anything else."""
    if len(frame) >= 2 and frame[0] == 0x92 and frame[1] < 0x80:
        return frame[1]
    return -1


def decode_frame(data: bytes) -> tuple[int, bytes]:
    raw = codec.unpack(data, max_bytes=FRAME_BYTES_MAX)
    if not (isinstance(raw, list) and len(raw) == 2):
        raise DecodeError("consensus frame: expected [tag, payload]")
    tag, payload = raw
    if tag not in TAGS or not isinstance(payload, bytes):
        raise DecodeError(f"consensus frame: unknown tag {tag!r} or payload not bytes")
    return tag, payload


def encode_proposal_frame(proposal_env: bytes, block: bytes, pol: tuple[bytes, ...] = ()) -> bytes:
    return encode_frame(TAG_PROPOSAL, codec.pack([proposal_env, block, list(pol)]))


def split_proposal_payload(payload: bytes) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    """[envelope, block, [prevotes of the proof-of-lock round]]."""
    raw = codec.unpack(payload, max_bytes=FRAME_BYTES_MAX)
    if not (isinstance(raw, list) and len(raw) == 3):
        raise DecodeError("proposal frame: expected [envelope, block, [votes]]")
    env, block, pol = raw
    if not (isinstance(env, bytes) and isinstance(block, bytes) and isinstance(pol, list)):
        raise DecodeError("proposal frame: expected [bytes, bytes, array]")
    if len(pol) > RELAY_MAX or not all(isinstance(v, bytes) for v in pol):
        raise DecodeError("proposal frame: bad proof-of-lock votes")
    return env, block, tuple(v for v in pol if isinstance(v, bytes))


def encode_batch(frames: list[bytes]) -> bytes:
    """Frames waiting for one peer, as one frame: a stream per request is the dearest part
    of a py-libp2p send, so a burst (a vote and a relay, a proposal and its votes) costs one."""
    return encode_frame(TAG_BATCH, codec.pack(list(frames)))


def split_batch(payload: bytes) -> list[bytes]:
    raw = codec.unpack(payload, max_bytes=FRAME_BYTES_MAX)
    if not isinstance(raw, list) or len(raw) > BATCH_FRAMES_MAX:
        raise DecodeError("batch frame: expected an array of frames")
    if not all(isinstance(f, bytes) for f in raw):
        raise DecodeError("batch frame: every item must be a frame's bytes")
    return [f for f in raw if isinstance(f, bytes)]
