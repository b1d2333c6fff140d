"""Blocks: the batches of transactions the committee orders, and their hashes.

A block names its parent by hash and carries the state root its parent left behind, so a
node whose ledger diverged (a bug, a corrupted disk) refuses the next block at once instead
of voting on a history it does not share. The block hash covers every field; votes and
certificates name blocks by it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from consensus.bft.votes import HASH_BYTES
from p2p.wire import PUBLIC_KEY_BYTES, Blob, Seq, Struct, UInt, wire_field

BLOCK_TXS_MAX = 10_000
BLOCK_BYTES_MAX = 2 * 1024 * 1024
"""Largest encoded block: below the direct-stream request limit (4 MiB) with room for the
proposal envelope around it."""
TX_BYTES_CAP = 1024 * 1024
"""Outer bound of one transaction on the wire; the chain's `tx_bytes_max` is the real one."""
GENESIS_HASH = bytes(HASH_BYTES)
"""The parent hash of block 1."""


@dataclass(frozen=True)
class Block(Struct):
    height: int = wire_field(UInt())
    parent_hash: bytes = wire_field(Blob(HASH_BYTES, HASH_BYTES))
    parent_state_root: bytes = wire_field(Blob(HASH_BYTES, HASH_BYTES))
    """The ledger's state root after the parent block (after genesis for block 1)."""
    time_ms: int = wire_field(UInt())
    """The proposer's clock, bounded by the committee: later than the parent's, and not
    ahead of a voter's own clock by more than `BftConfig.clock_drift_max_ms`."""
    proposer: bytes = wire_field(Blob(PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES))
    txs: tuple[bytes, ...] = wire_field(Seq(Blob(TX_BYTES_CAP), BLOCK_TXS_MAX))

    def invariant_violation(self) -> str | None:
        if self.height < 1:
            return "blocks start at height 1"
        return None

    def block_hash(self) -> bytes:
        return block_hash_of(self.encode())


def block_hash_of(encoded: bytes) -> bytes:
    return hashlib.sha256(b"gpumesh/block/v1" + encoded).digest()


def decode_block(data: bytes) -> Block:
    """Strict decode of a block's canonical bytes; DecodeError otherwise."""
    return Block.decode(data, max_bytes=BLOCK_BYTES_MAX)
