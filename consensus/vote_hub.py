"""Vote routing through the round's proposer: O(n) frames per round instead of O(n^2).

Tendermint as written sends every vote to every member, so one height of a committee of n
costs about 2n^2 frames. On one machine per member that is fine; on a shared, CPU-bound host
(16 members on 2 cores) each frame costs a member its share of Noise, yamux and the event loop,
and at n = 16 that chatter alone filled both cores. With a hub, a member sends its first vote
for a block in round r only to r's proposer (the hub); the hub relays the votes it collects
to every member in one batch as soon as they make a quorum for their slot (round, kind);
votes of a slot that falls short leave after `hub_flush_ms`, later ones with the next batch.
A height then costs about 5n frames.

Nothing about safety changes: votes are signed statements, verified on arrival however they
came, and the height machine counts them the same. What a hub can do wrong is withhold, and
that only costs time, because every path back to all-to-all stays in place:
- a vote for nil (something is already wrong in the round) goes to every member;
- the height machine re-sends our statements to every member after `rebroadcast_ms`, and the
  engine relays what it received directly while a height is slow;
- a member that receives, directly, a block vote that is new to it and is not the hub of the
  vote's round forwards it to the hub, so conflicting votes sent to different members (an
  equivocator ignores our routing) meet at the hub, which relays both: the evidence reaches
  every member that holds the other one.

Pure: no clock, no I/O; the engine owns one `VoteHub` per height while the committee is at
least `EngineConfig.vote_hub_from` members.
"""

from __future__ import annotations

from consensus.bft.votes import NIL, Vote
from consensus.committee import Committee

NEVER_MS = 1 << 62


class VoteHub:
    """One height's vote routing for one member."""

    def __init__(self, committee: Committee, height: int, me: bytes, flush_ms: int) -> None:
        self.committee, self.height, self.me, self.flush_ms = committee, height, me, flush_ms
        self._buffer: list[bytes] = []
        self._voters: dict[tuple[int, int], set[bytes]] = {}
        self._quorum_relayed: set[tuple[int, int]] = set()
        self.flush_at_ms = NEVER_MS
        """When the votes held now must leave even without a quorum (NEVER_MS if none are)."""

    def hub_of(self, round_: int) -> bytes:
        """The proposer of `round_` at this height (the machine's view is height + round)."""
        return self.committee.leader_for(self.height + round_)

    def route(self, vote: Vote) -> bytes | None:
        """Where our fresh vote goes: the hub, or None for every member (nil votes)."""
        return None if vote.block_hash == NIL else self.hub_of(vote.round)

    def is_hub_for(self, vote: Vote) -> bool:
        return self.hub_of(vote.round) == self.me

    def collect(self, envelope: bytes, signer: bytes, vote: Vote, now_ms: int) -> bool:
        """Hold a vote of a round we are the hub of. True: relay what is held now (its slot
        just reached a quorum). A vote of a slot without a quorum yet leaves by `flush_at_ms`
        at the latest (a round whose block votes fall short still shows members its votes);
        one that comes after its slot's quorum waits for the next batch, if any: nobody needs
        it to progress, and we checked it for equivocation ourselves."""
        self._buffer.append(envelope)
        slot = (vote.round, vote.kind)
        if slot in self._quorum_relayed:
            return False  # late: members have a quorum already; it leaves with the next batch
        voters = self._voters.setdefault(slot, set())
        voters.add(signer)
        if self.committee.has_quorum(voters):
            self._quorum_relayed.add(slot)
            return True
        if self.flush_at_ms == NEVER_MS:
            self.flush_at_ms = now_ms + self.flush_ms
        return False

    def take(self) -> list[bytes]:
        """The held votes, to relay to every member; the hub holds nothing after."""
        out, self._buffer = self._buffer, []
        self.flush_at_ms = NEVER_MS
        return out
