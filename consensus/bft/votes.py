"""Votes and commit certificates: the signed facts BFT agreement is made of.

A leaf module (it imports only the wire layer) because two packages need it: the BFT core,
which casts and counts votes, and the ledger, which turns two conflicting votes into a
slashing (`consensus.ledger.evidence`). A certificate is the quorum of precommits for one
block, stored without repeating the vote body: every precommit in it signs the same
(height, round, block hash), so each signature is checked against bytes rebuilt from the
certificate itself.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from p2p import codec
from p2p.errors import DecodeError
from p2p.wire import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Blob,
    Record,
    Seq,
    Signed,
    Signer,
    Struct,
    UInt,
    decode_signed,
    register,
    sign,
    signing_bytes,
    verify,
    wire_field,
)

HASH_BYTES = 32
NIL = b""
"""The block hash of a vote for nothing (Tendermint's nil): 'no valid proposal in time'."""
ROUND_MAX = 2**31 - 1
CERT_SIGNERS_MAX = 1_000


class VoteKind(enum.IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


@register
@dataclass(frozen=True)
class Vote(Record):
    """One committee member's prevote or precommit for a block (or for nil) at a height and
    round. The envelope's signer is the voter."""

    KIND = 30
    VERSION = 1

    height: int = wire_field(UInt())
    round: int = wire_field(UInt(ROUND_MAX))
    kind: int = wire_field(UInt(2))
    block_hash: bytes = wire_field(Blob(HASH_BYTES))

    def invariant_violation(self) -> str | None:
        if self.kind not in (VoteKind.PREVOTE, VoteKind.PRECOMMIT):
            return f"vote kind {self.kind} is neither prevote (1) nor precommit (2)"
        if self.block_hash not in (NIL,) and len(self.block_hash) != HASH_BYTES:
            return f"block hash must be empty (nil) or {HASH_BYTES} bytes"
        if self.height < 1:
            return "votes are for heights 1 and above"
        return None

    @property
    def slot(self) -> tuple[int, int, int]:
        """(height, round, kind): an honest member signs at most one vote per slot."""
        return (self.height, self.round, self.kind)


@register
@dataclass(frozen=True)
class Proposal(Record):
    """The round's proposer offers the block with this hash (the block travels beside the
    envelope, so two conflicting proposals fit in one small evidence transaction). A block
    first proposed in an earlier round and seen with a quorum of prevotes there carries that
    round (`pol_round_plus_one` - 1), so members locked on it may vote for it again."""

    KIND = 31
    VERSION = 1

    height: int = wire_field(UInt())
    round: int = wire_field(UInt(ROUND_MAX))
    pol_round_plus_one: int = wire_field(UInt(ROUND_MAX))
    block_hash: bytes = wire_field(Blob(HASH_BYTES, HASH_BYTES))

    def invariant_violation(self) -> str | None:
        if self.height < 1:
            return "proposals are for heights 1 and above"
        if self.pol_round_plus_one > self.round:
            return "the proof-of-lock round must be earlier than the proposal's round"
        return None

    @property
    def pol_round(self) -> int:
        """-1 when the block is proposed fresh (Tendermint's validRound = -1)."""
        return self.pol_round_plus_one - 1

    @property
    def slot(self) -> tuple[int, int, int]:
        return (self.height, self.round, PROPOSAL_SLOT)


PROPOSAL_SLOT = 0
"""The `slot` kind of a proposal, beside VoteKind's 1 and 2."""


def sign_vote(vote: Vote, signer: Signer, chain_id: bytes) -> Signed[Vote]:
    return sign(vote, signer, chain_id)


def decode_statement(data: bytes, chain_id: bytes) -> Signed[Vote] | Signed[Proposal]:
    """Bytes to a verified vote or proposal; DecodeError/BadSignature otherwise."""
    signed = decode_signed(data, chain_id=chain_id, max_bytes=STATEMENT_BYTES_MAX)
    if not isinstance(signed.record, Vote | Proposal):
        raise DecodeError(f"expected a vote or a proposal, got {type(signed.record).__name__}")
    return signed


STATEMENT_BYTES_MAX = 512
"""A signed vote or proposal is about 170 bytes; anything far larger is not one."""


@dataclass(frozen=True)
class CommitCertificate(Struct):
    """A quorum of precommits for `block_hash` at (height, round): proof that the committee
    committed that block. Signers are sorted and distinct, so a certificate has one form."""

    height: int = wire_field(UInt())
    round: int = wire_field(UInt(ROUND_MAX))
    block_hash: bytes = wire_field(Blob(HASH_BYTES, HASH_BYTES))
    signers: tuple[bytes, ...] = wire_field(
        Seq(Blob(PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES), CERT_SIGNERS_MAX)
    )
    signatures: tuple[bytes, ...] = wire_field(
        Seq(Blob(SIGNATURE_BYTES, SIGNATURE_BYTES), CERT_SIGNERS_MAX)
    )

    def invariant_violation(self) -> str | None:
        if len(self.signers) != len(self.signatures):
            return "one signature per signer"
        if list(self.signers) != sorted(set(self.signers)):
            return "signers must be sorted and distinct"
        return None

    def vote(self) -> Vote:
        return Vote(self.height, self.round, VoteKind.PRECOMMIT, self.block_hash)

    def valid_signers(self, chain_id: bytes) -> list[bytes]:
        """The signers whose signature verifies (each check costs one ed25519 verify)."""
        body = self.vote().to_wire()
        out = []
        for signer, sig in zip(self.signers, self.signatures, strict=True):
            message = signing_bytes(Vote.KIND, Vote.VERSION, chain_id, signer, body)
            if verify(signer, message, sig):
                out.append(signer)
        return out

    @classmethod
    def from_votes(cls, votes: list[Signed[Vote]]) -> CommitCertificate:
        """Build from precommits that all sign the same (height, round, hash)."""
        if not votes:
            raise ValueError("a certificate needs at least one vote")
        first = votes[0].record
        by_signer = {}
        for v in votes:
            if v.record != first:
                raise ValueError("every vote of a certificate must sign the same precommit")
            by_signer[v.signer] = v.signature
        signers = tuple(sorted(by_signer))
        return cls(
            first.height,
            first.round,
            first.block_hash,
            signers,
            tuple(by_signer[s] for s in signers),
        )

    def digest(self) -> bytes:
        return hashlib.sha256(codec.pack(self.to_wire())).digest()


def decode_certificate(data: bytes) -> CommitCertificate:
    """Strict decode (shape only; signatures are checked against a committee elsewhere)."""
    return CommitCertificate.decode(data)
