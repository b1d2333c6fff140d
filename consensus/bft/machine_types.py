"""The vocabulary of a Tendermint height machine (`consensus.bft.tendermint`): its timeouts,
its steps, the statements it persists, the actions it asks of the engine in order, and the
`App` it calls back. Apart from the machine so that engines and tests name them alone."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from consensus.bft.block import Block
from consensus.bft.votes import CommitCertificate, Vote


@dataclass(frozen=True)
class BftConfig:
    """Timeouts grow linearly with the round, so that after enough failed rounds they exceed
    whatever the network's real delay is and some round succeeds (partial synchrony)."""

    timeout_propose_ms: int = 3_000
    timeout_propose_delta_ms: int = 1_000
    timeout_vote_ms: int = 1_000
    timeout_vote_delta_ms: int = 500
    rebroadcast_ms: int = 1_000
    """Re-send our statements of the current round this often: links drop frames, peers
    restart, partitions heal; the protocol's own timers would otherwise be the only retry."""
    rebroadcast_backoff_max: int = 8
    """While a height goes on without a commit, each re-send waits twice as long as the last,
    up to this many times `rebroadcast_ms` (`rebroadcast_after`). A height that stalls
    because the members are overloaded (every frame late, requests timing out) must not
    be fed a full round of frames to every member every second: on a 2-core VM, 16 live
    members that did that kept each other saturated and never committed height 1."""
    rounds_ahead_max: int = 64
    """Statements for rounds further ahead are ignored, bounding what a Byzantine member can
    make us hold."""

    def rebroadcast_after(self, sent: int) -> int:
        """The wait before the next re-send once `sent` re-sends have gone out since the
        last commit: `rebroadcast_ms`, doubled per re-send up to `rebroadcast_backoff_max`
        times it."""
        return self.rebroadcast_ms * min(1 << min(sent, 30), self.rebroadcast_backoff_max)

    def timeout_propose(self, r: int) -> int:
        return self.timeout_propose_ms + r * self.timeout_propose_delta_ms

    def timeout_vote(self, r: int) -> int:
        return self.timeout_vote_ms + r * self.timeout_vote_delta_ms

    def timeout_stall(self, r: int) -> int:
        """A round that has not ended after every timeout of it could have fired ends
        anyway. The paper's timeouts on prevotes and precommits start only once a
        quorum of them arrived; when fewer members than a quorum share our round (some
        restarted with their votes lost, some moved ahead), none ever starts. Moving to a
        later round never endangers safety, which rests on locks alone."""
        return self.timeout_propose(r) + 2 * self.timeout_vote(r) + self.rebroadcast_ms


class Step(enum.IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2
    STALL = 3
    """Not a step: the key of the round-stall timer (see `BftConfig.timeout_stall`)."""


@dataclass(frozen=True)
class Statement:
    """What the engine must persist before sending: one of our signed statements (kind 0
    proposal, with `data` = pack([envelope, block]); 1 prevote; 2 precommit: `data` = the
    envelope), or our lock (kind 3, `data` = pack([block, [the prevotes that justified
    it]]), so that after a restart we can still prove the lock to others and to ourselves)."""

    height: int
    round: int
    kind: int
    data: bytes


# -- actions, carried out by the engine in order ------------------------------------------------


@dataclass(frozen=True)
class Persist:
    statement: Statement


@dataclass(frozen=True)
class Broadcast:
    """Send to every other committee member: a vote envelope, or a proposal with its block."""

    envelope: bytes
    block: bytes | None = None
    pol: tuple[bytes, ...] = ()
    """With a proposal of a block seen before: the prevotes for it in its proof-of-lock
    round, so a member that missed them can still accept it (line 28)."""
    vote: Vote | None = None
    """Set on a vote's first sending only (never on a re-send): the engine may route it
    through the round's hub (`consensus.vote_hub`); re-sends always go to every member."""


@dataclass(frozen=True)
class Decide:
    block: Block
    block_bytes: bytes
    cert: CommitCertificate


@dataclass(frozen=True)
class EvidenceFound:
    """Two statements one member signed for the same slot: equivocation."""

    first: bytes
    second: bytes
    offender: bytes


Action = Persist | Broadcast | Decide | EvidenceFound


class App:
    """What the machine asks of the node around it (the engine implements it)."""

    def validate(self, block: Block, block_hash: bytes) -> str | None:
        """None if the block is valid at this height, else why not. Called once per hash."""
        raise NotImplementedError

    def make_block(self, now_ms: int, round_: int, round_started_ms: int) -> Block | int:
        """A block to propose now, or the time at which to ask again."""
        raise NotImplementedError
