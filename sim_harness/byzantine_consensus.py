"""Byzantine committee members for the consensus simulator.

A Byzantine member runs an honest engine (so it knows the chain and the protocol's state)
and a behaviour decides what actually leaves it: each frame its engine sends to a member
passes through `outgoing`, which may drop it, corrupt it, or replace it with statements the
member signs itself, such as a second proposal or a second vote for the same slot, sent to
some members while the others get the first (equivocation). Names shared with the gossip
behaviours (`silent`, `garbage`, `replay`) mean the same thing on this plane. Register more
with `@register_consensus_behaviour`; every random choice draws from `ctx.rng`.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

from consensus.bft.block import decode_block
from consensus.bft.messages import (
    TAG_PROPOSAL,
    TAG_VOTE,
    decode_frame,
    encode_frame,
    encode_proposal_frame,
    split_proposal_payload,
)
from consensus.bft.votes import NIL, Proposal, Vote, decode_statement
from p2p.errors import BadSignature, DecodeError
from p2p.identity import Identity
from p2p.wire import sign


@dataclass
class ConsensusByzContext:
    name: str
    identity: Identity
    chain_id: bytes
    rng: random.Random


class ConsensusBehaviour:
    name: ClassVar[str] = "honest"
    serves_sync: ClassVar[bool] = True
    follows_vote_hub: ClassVar[bool] = True
    """False: its engine sends every vote to every member, never through the round's hub
    (`consensus.vote_hub`): routing is a courtesy a Byzantine member need not pay."""

    def __init__(self, ctx: ConsensusByzContext) -> None:
        self.ctx = ctx

    def outgoing(self, to: bytes, frame: bytes) -> list[bytes]:
        """The frames that actually go to `to` when the honest engine sends `frame`."""
        return [frame]

    def second_half(self, member: bytes) -> bool:
        """Which members get the other version of an equivocated statement: a fixed split of
        the committee, different for each Byzantine member."""
        return bool(hashlib.sha256(self.ctx.identity.public_key + member).digest()[0] & 1)


CONSENSUS_BYZANTINE: dict[str, type[ConsensusBehaviour]] = {}
_B = TypeVar("_B", bound=type[ConsensusBehaviour])


def register_consensus_behaviour(cls: _B) -> _B:
    if cls.name in CONSENSUS_BYZANTINE and CONSENSUS_BYZANTINE[cls.name] is not cls:
        raise ValueError(f"consensus behaviour {cls.name!r} is already registered")
    CONSENSUS_BYZANTINE[cls.name] = cls
    return cls


@register_consensus_behaviour
class Silent(ConsensusBehaviour):
    """Sends nothing and serves no blocks: a crashed member that still counts as seated."""

    name = "silent"
    serves_sync = False

    def outgoing(self, to: bytes, frame: bytes) -> list[bytes]:
        return []


@register_consensus_behaviour
class Garbage(ConsensusBehaviour):
    """Half of what it sends is random bytes (sometimes a well-framed but bogus payload)."""

    name = "garbage"

    def outgoing(self, to: bytes, frame: bytes) -> list[bytes]:
        rng = self.ctx.rng
        if rng.random() < 0.5:
            return [frame]
        junk = rng.randbytes(rng.randint(0, 400))
        return [encode_frame(rng.choice((1, 2, 3, 4, 5)), junk) if rng.random() < 0.5 else junk]


@register_consensus_behaviour
class Replay(ConsensusBehaviour):
    """Sends each frame, then an old one again."""

    name = "replay"

    def __init__(self, ctx: ConsensusByzContext) -> None:
        super().__init__(ctx)
        self._old: deque[bytes] = deque(maxlen=64)

    def outgoing(self, to: bytes, frame: bytes) -> list[bytes]:
        out = [frame]
        if self._old:
            out.append(self.ctx.rng.choice(list(self._old)))
        self._old.append(frame)
        return out


class _Equivocator(ConsensusBehaviour):
    """Signs a second statement for a slot it already signed, for half of the members. It
    sends to every member itself: through a hub, only the hub would get a version."""

    follows_vote_hub = False

    def _twin_vote(self, vote: Vote) -> bytes:
        other = NIL if vote.block_hash != NIL else self.ctx.rng.randbytes(32)
        twin = replace(vote, block_hash=other)
        return sign(twin, self.ctx.identity, self.ctx.chain_id).encode()

    def _rewrite(self, frame: bytes, on_vote: bool, on_proposal: bool) -> bytes:
        try:
            tag, payload = decode_frame(frame)
            if tag == TAG_VOTE and on_vote:
                signed = decode_statement(payload, self.ctx.chain_id)
                if isinstance(signed.record, Vote):
                    return encode_frame(TAG_VOTE, self._twin_vote(signed.record))
            if tag == TAG_PROPOSAL and on_proposal:
                env, block_bytes, _ = split_proposal_payload(payload)
                signed = decode_statement(env, self.ctx.chain_id)
                if isinstance(signed.record, Proposal):
                    block = decode_block(block_bytes)
                    twin_block = replace(block, time_ms=block.time_ms + 1, txs=())
                    twin_bytes = twin_block.encode()
                    twin = replace(signed.record, block_hash=twin_block.block_hash())
                    twin_env = sign(twin, self.ctx.identity, self.ctx.chain_id).encode()
                    return encode_proposal_frame(twin_env, twin_bytes)
        except (DecodeError, BadSignature):
            pass
        return frame


@register_consensus_behaviour
class Equivocate(_Equivocator):
    """As proposer, a second block for half the members; as voter, a second vote too."""

    name = "equivocate"

    def outgoing(self, to: bytes, frame: bytes) -> list[bytes]:
        if not self.second_half(to):
            return [frame]
        return [self._rewrite(frame, on_vote=True, on_proposal=True)]


@register_consensus_behaviour
class ConflictingVotes(_Equivocator):
    """Votes one way to half the members and another way to the rest."""

    name = "conflicting_votes"

    def outgoing(self, to: bytes, frame: bytes) -> list[bytes]:
        if not self.second_half(to):
            return [frame]
        return [self._rewrite(frame, on_vote=True, on_proposal=False)]
