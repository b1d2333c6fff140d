"""The committed chain as one node holds it: the ledger at the head, the head block, and the
committee that must certify the next block.

Committee members and followers alike extend it only with a block and its certificate,
checked here against the committee recorded in state: height and parent, the parent's state
root, and a quorum of valid precommit signatures. So a follower trusts no peer: a block sync
peer can withhold blocks but never make a node accept a wrong one.

The committee of epoch e (heights e*E+1 .. (e+1)*E, E = `epoch_blocks`) is drawn from the
state at height e*E, after the epoch step rolled the seed. It is held here, and inside
snapshots, because stakes change within an epoch while the committee must not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from consensus.bft.block import GENESIS_HASH, Block, block_hash_of, decode_block
from consensus.bft.votes import CommitCertificate, decode_certificate
from consensus.committee import Committee, NoEligibleStake
from consensus.ledger.apply import BlockContext, BlockOutcome, apply_block
from consensus.ledger.genesis import Genesis
from consensus.ledger.snapshot import decode_state
from consensus.ledger.state import LedgerState
from consensus.ledger.tx import Tx
from p2p import codec
from p2p.errors import DecodeError

SNAPSHOT_BYTES_MAX = 256 * 1024 * 1024


class InvalidBlock(ValueError):
    """A block or certificate that does not extend our chain; the message says why."""


@dataclass(frozen=True)
class VerifiedCommit:
    block: Block
    block_bytes: bytes
    block_hash: bytes
    cert: CommitCertificate
    cert_bytes: bytes


class Chain:
    """Mutable, but only through `apply`; everything else reads."""

    def __init__(
        self, state: LedgerState, head_hash: bytes, head_time_ms: int, committee: Committee
    ) -> None:
        self.state, self.head_hash, self.head_time_ms = state, head_hash, head_time_ms
        self.committee = committee
        self.head_root = state.state_root()

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> Chain:
        state = genesis.initial_state()
        return cls(state, GENESIS_HASH, 0, state.next_committee())

    @property
    def height(self) -> int:
        return self.state.height

    @property
    def chain_id(self) -> bytes:
        return self.state.chain_id

    # -- checking ---------------------------------------------------------------------------

    def check_block(self, block: Block) -> str | None:
        """Does `block` extend our head? (Transactions are the ledger's business: a refused
        one is skipped and reported, never a reason to refuse the block.)"""
        if block.height != self.height + 1:
            return f"height {block.height}, expected {self.height + 1}"
        if block.parent_hash != self.head_hash:
            return "parent hash is not our head"
        if block.parent_state_root != self.head_root:
            return "parent state root differs from ours"
        if block.time_ms <= self.head_time_ms and self.height > 0:
            return f"time {block.time_ms} is not after the parent's {self.head_time_ms}"
        if block.proposer not in self.committee:
            return "proposer is not a committee member"
        return None

    def check_commit(self, block_bytes: bytes, cert_bytes: bytes) -> VerifiedCommit:
        """A block and certificate from a peer (sync) or from our own consensus; raises
        InvalidBlock saying what is wrong."""
        try:
            block = decode_block(block_bytes)
            cert = decode_certificate(cert_bytes)
        except DecodeError as exc:
            raise InvalidBlock(f"undecodable: {exc}") from None
        problem = self.check_block(block)
        if problem is not None:
            raise InvalidBlock(problem)
        block_hash = block_hash_of(block_bytes)
        if cert.height != block.height or cert.block_hash != block_hash:
            raise InvalidBlock("the certificate is for another block")
        signers = cert.valid_signers(self.chain_id)
        if not self.committee.has_quorum(signers):
            weight = self.committee.weight_of(signers)
            raise InvalidBlock(
                f"certificate weight {weight} is below the quorum {self.committee.quorum_weight}"
            )
        return VerifiedCommit(block, block_bytes, block_hash, cert, cert_bytes)

    # -- extending --------------------------------------------------------------------------

    def apply(
        self, commit: VerifiedCommit, decode: Callable[[bytes], Tx] | None = None
    ) -> BlockOutcome:
        """Apply a verified commit; the committee turns over when the block closes an epoch."""
        block = commit.block
        if block.height != self.height + 1 or block.parent_hash != self.head_hash:
            raise InvalidBlock("commit does not extend the head (verify it first)")
        ctx = BlockContext(block.height, block.parent_hash)
        outcome = apply_block(self.state, block.txs, ctx, decode)
        self.head_hash, self.head_time_ms = commit.block_hash, block.time_ms
        self.head_root = outcome.state_root
        if outcome.epoch is not None:
            # with no one eligible, the sitting committee carries on rather than halt
            with contextlib.suppress(NoEligibleStake):
                self.committee = self.state.next_committee()
        return outcome

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything needed to resume at this height without replaying from genesis."""
        c = self.committee
        body: list[codec.Value] = [
            1,
            self.state.encode(),
            self.head_hash,
            self.head_time_ms,
            list(c.members),
            list(c.weights),
        ]
        return codec.pack(body)

    @classmethod
    def from_snapshot(cls, data: bytes) -> Chain:
        raw = codec.unpack(data, max_bytes=SNAPSHOT_BYTES_MAX, max_depth=3)
        if not (isinstance(raw, list) and len(raw) == 6 and raw[0] == 1):
            raise DecodeError("chain snapshot: unknown format")
        _, state_bytes, head_hash, head_time, members, weights = raw
        if not (
            isinstance(state_bytes, bytes)
            and isinstance(head_hash, bytes)
            and isinstance(head_time, int)
            and isinstance(members, list)
            and isinstance(weights, list)
        ):
            raise DecodeError("chain snapshot: wrong field types")
        state = decode_state(state_bytes)
        if not all(isinstance(m, bytes) and len(m) == 32 for m in members):
            raise DecodeError("chain snapshot: committee members must be 32-byte keys")
        if not all(isinstance(w, int) for w in weights) or len(head_hash) != 32:
            raise DecodeError("chain snapshot: committee weights must be integers")
        ms = [m for m in members if isinstance(m, bytes)]
        ws = [w for w in weights if isinstance(w, int)]
        try:
            committee = Committee(tuple(ms), tuple(ws), sum(ws))
        except ValueError as exc:
            raise DecodeError(f"chain snapshot: committee: {exc}") from None
        return cls(state, head_hash, head_time, committee)
