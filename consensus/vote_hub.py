"""Vote routing through the round's proposer: O(n) frames per round instead of O(n^2).

Tendermint as written sends every vote to every member, so one height of a committee of n
costs about 2n^2 frames. On one machine per member that is fine; on a shared, CPU-bound host
(16 members on 2 cores) each frame costs a member its share of Noise, yamux and the event loop,
and at n = 16 that chatter alone filled both cores. With a hub, a member sends its first vote
for a block in round r only to r's proposer (the hub); the hub relays the votes it collects
to every member in one batch as soon as a quorum voted for one block in a (round, kind);
other votes leave after `hub_flush_ms`, those after the quorum with the next batch. A height
then costs about 6n frames (the witness included).

Nothing about safety changes: votes are signed statements, verified on arrival however they
came, and the height machine counts them the same. What a hub can do wrong is withhold, and
that only costs time, because every path back to all-to-all stays in place:
- a vote for nil (something is already wrong in the round), any vote in a round after the
  first, and any vote once the height has run `rebroadcast_ms`, goes to every member;
- the height machine re-sends our statements to every member after `rebroadcast_ms`, and the
  engine relays what it received directly while a height is slow;
- a member that receives, directly, a block vote that is new to it and is not the hub of the
  vote's round forwards it to the hub, so conflicting votes sent to different members (an
  equivocator ignores our routing) meet at the hub, which relays both: the evidence reaches
  every member that holds the other one;
- what the hub itself signed (its proposal, its votes) cannot meet at the hub, so as a height
  ends every member sends the next proposer, in one relay frame, the first proposal and hub
  votes it held (`witness`): two versions, sent to different members, meet there.

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
        self._voters: dict[tuple[int, int, bytes], set[bytes]] = {}
        self._quorum_relayed: set[tuple[int, int, bytes]] = set()
        self._held: dict[tuple[bytes, int, int], int] = {}
        """(signer, round, kind) -> envelopes held: two at most (the second is evidence)."""
        self.flush_at_ms = NEVER_MS
        """When the votes held now must leave even without a quorum (NEVER_MS if none are)."""

    def hub_of(self, round_: int) -> bytes:
        """The proposer of `round_` at this height (the machine's view is height + round)."""
        return self.committee.leader_for(self.height + round_)

    def route(self, vote: Vote, *, slow: bool) -> bytes | None:
        """Where our fresh vote goes: the hub, or None for every member (a nil vote, a vote of
        a round after the first, or any vote once the height is `slow`)."""
        if vote.block_hash == NIL or vote.round > 0 or slow:
            return None
        return self.hub_of(vote.round)

    def is_hub_for(self, vote: Vote) -> bool:
        return self.hub_of(vote.round) == self.me

    def collect(self, envelope: bytes, signer: bytes, vote: Vote, now_ms: int) -> bool:
        """Hold a vote of a round we are the hub of. True: relay what is held now (a quorum
        just voted for one block in one (round, kind): votes for a junk hash never trigger
        the batch early). A vote without such a quorum yet leaves by `flush_at_ms` at the
        latest (a round whose votes fall short still shows members its votes); one for a block
        whose quorum was relayed waits for the next batch, if any: nobody needs it to
        progress, and we checked it for equivocation ourselves."""
        key = (signer, vote.round, vote.kind)
        held = self._held.get(key, 0)
        if held >= 2:
            return False  # a third version of one slot adds no evidence, only memory
        self._held[key] = held + 1
        self._buffer.append(envelope)
        slot = (vote.round, vote.kind, vote.block_hash)
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
