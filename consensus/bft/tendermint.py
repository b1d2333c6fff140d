"""One height of Tendermint consensus, as a pure state machine.

This is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus"
(2018), rule for rule (the comments name the paper's line numbers), with stake weights in
place of head counts: "2f+1" is the committee's quorum weight (more than 2/3 of stake) and
"f+1" is any weight above what the committee tolerates as Byzantine. Why Tendermint rather
than chained HotStuff: each height stands alone (a block is final the moment it commits, no
chain of QCs to follow), the locking rules are few and proven, and view changes need no extra
message type: a round that fails simply times out into the next, with a new proposer.

Safety never rests on the network (messages may be lost, duplicated, reordered or late) nor
on clocks (timeouts only decide when to give up on a round). It rests on three things:
  * an honest member signs at most one vote per (height, round, kind) and one proposal per
    (height, round): `_sign` refuses a second, and every statement is handed to the caller
    to persist (`Persist`) before it may be sent (`Broadcast`), and restored after a crash;
  * the lock: after precommitting a block a member prevotes only for it, unless a later
    round shows a quorum of prevotes for another block; the lock is persisted too;
  * quorum intersection: two quorums share more than the tolerated Byzantine weight.

The machine never sends or reads a clock: the engine (`consensus.engine`) feeds it verified
statements and the time, and carries out its actions, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.bft.block import Block, block_hash_of, decode_block
from consensus.bft.machine_types import (
    Action,
    App,
    BftConfig,
    Broadcast,
    Decide,
    EvidenceFound,
    Persist,
    Statement,
    Step,
)
from consensus.bft.votes import (
    NIL,
    PROPOSAL_SLOT,
    CommitCertificate,
    Proposal,
    Vote,
    VoteKind,
    decode_statement,
)
from consensus.committee import Committee
from p2p import codec
from p2p.wire import Signed, Signer, sign

SILENT = 1 << 40
"""`silent_below_round` of a member that may not vote at this height at all."""
LOCK_SLOT = 3
"""`Statement.kind` of a persisted lock (the block we precommitted); 0-2 are signed slots."""


@dataclass
class _Tally:
    """One round's votes of one kind.

    A member that signs votes for two blocks in one slot is counted for both, and once in
    `total`. That is safe: two quorums for different blocks would share more than the
    tolerated Byzantine weight, hence an honest member, who signs one vote per slot. And it
    is needed for liveness: otherwise which of an equivocator's votes a member heard first
    decides whether it sees a quorum, members disagree about proof-of-lock rounds, and a
    committee with f equivocators can stay locked apart forever (Tendermint's "peer maj23"
    solves the same problem with extra messages)."""

    by_voter: dict[bytes, dict[bytes, Signed[Vote]]] = field(default_factory=dict)
    """voter -> block hash -> its vote (two entries only for an equivocator)."""
    weight: dict[bytes, int] = field(default_factory=dict)
    total: int = 0

    def of(self, block_hash: bytes) -> int:
        return self.weight.get(block_hash, 0)

    def add(self, signed: Signed[Vote], weight: int) -> Signed[Vote] | None:
        """Count a vote; returns an earlier, different vote of the same voter, if any."""
        mine = self.by_voter.get(signed.signer)
        h = signed.record.block_hash
        if mine is None:
            self.by_voter[signed.signer] = {h: signed}
            self.total += weight
            self.weight[h] = self.weight.get(h, 0) + weight
            return None
        if h in mine:
            return None
        earlier = next(iter(mine.values()))
        if len(mine) < 2:  # a third vote proves nothing new and could bloat memory
            mine[h] = signed
            self.weight[h] = self.weight.get(h, 0) + weight
        return earlier

    def votes_for(self, block_hash: bytes) -> list[Signed[Vote]]:
        return [m[block_hash] for m in self.by_voter.values() if block_hash in m]


@dataclass
class _Proposed:
    signed: Signed[Proposal]
    envelope: bytes
    block: Block
    block_bytes: bytes
    block_hash: bytes


__all__ = [
    "LOCK_SLOT",
    "SILENT",
    "Action",
    "App",
    "BftConfig",
    "Broadcast",
    "Decide",
    "EvidenceFound",
    "HeightMachine",
    "Persist",
    "Statement",
    "Step",
]


class HeightMachine:
    """Consensus on the block at one height. Feed it with `on_proposal`, `on_vote` and
    `on_time`; drain `actions` after each call; `decided` is set once it commits."""

    def __init__(
        self,
        height: int,
        committee: Committee,
        config: BftConfig,
        chain_id: bytes,
        signer: Signer | None,
        app: App,
        now_ms: int,
        restored: list[Statement] | None = None,
        *,
        may_vote: bool = True,
    ) -> None:
        self.height, self.committee, self.config = height, committee, config
        self.chain_id, self.app = chain_id, app
        self.me = (
            signer.public_key if signer is not None and signer.public_key in committee else None
        )
        self._signer = signer if self.me is not None else None
        self.silent_below_round = 0 if may_vote else SILENT
        """We sign nothing in rounds below this (a member that forgot its votes)."""
        self.actions: list[Action] = []
        self.decided: Decide | None = None
        self.round, self.step = 0, Step.PROPOSE
        self.round_started_ms = now_ms
        self.locked: tuple[int, Block, bytes, bytes] | None = None
        """(round, block, bytes, hash) we are locked on."""
        self.valid: tuple[int, Block, bytes, bytes] | None = None
        self._proposals: dict[int, _Proposed] = {}
        self._prevotes: dict[int, _Tally] = {}
        self._precommits: dict[int, _Tally] = {}
        self._senders: dict[int, set[bytes]] = {}
        """Members heard from in each round (for rule 55)."""
        self._validity: dict[bytes, str | None] = {}
        self._refused: set[bytes] = set()
        self._mine: dict[tuple[int, int], bytes] = {}
        """Our signed statements by (round, kind): never sign another for the same slot."""
        self._timers: dict[tuple[int, int], int] = {}
        """(step, round) -> deadline of an armed timeout."""
        self._fired: set[tuple[int, int]] = set()
        self._done36: set[int] = set()
        self._evidence_sent: set[tuple[bytes, int, int]] = set()
        self._next_rebroadcast_ms = now_ms + config.rebroadcast_ms
        self._rebroadcasts = 0
        """Re-sends in this height so far (they back off: `BftConfig.rebroadcast_after`)."""
        self._propose_retry_ms: int | None = None
        self.counts: dict[str, int] = {}
        for st in restored or ():
            self._restore(st)
        self._start_round(self.round, now_ms)
        self._evaluate(now_ms)

    # -- inputs -----------------------------------------------------------------------------

    def on_proposal(
        self, signed: Signed[Proposal], envelope: bytes, block: Block, block_bytes: bytes,
        block_hash: bytes, now_ms: int,
    ) -> None:  # fmt: skip
        """A verified proposal whose block hashes to `block_hash` (the engine checked)."""
        p = signed.record
        if p.height != self.height or self.decided or not self._round_in_window(p.round):
            return
        if signed.signer != self.committee.leader_for(self._view(p.round)):
            self._count("proposal_from_non_proposer")
            return
        old = self._proposals.get(p.round)
        if old is not None:
            if old.block_hash != p.block_hash or old.signed.record != p:
                self._evidence(old.envelope, envelope, signed.signer, p.round, PROPOSAL_SLOT)
            return
        self._proposals[p.round] = _Proposed(signed, envelope, block, block_bytes, block_hash)
        self._heard(p.round, signed.signer)
        self._evaluate(now_ms)

    def on_relayed_proposal(self, signed: Signed[Proposal], envelope: bytes) -> None:
        """A proposal passed on without its block: it can only prove equivocation."""
        p = signed.record
        old = self._proposals.get(p.round)
        if (
            p.height == self.height
            and old is not None
            and old.signed.signer == signed.signer
            and old.signed.record != p
        ):
            self._evidence(old.envelope, envelope, signed.signer, p.round, PROPOSAL_SLOT)

    def on_vote(self, signed: Signed[Vote], envelope: bytes, now_ms: int) -> None:
        v = signed.record
        if v.height != self.height or self.decided or not self._round_in_window(v.round):
            return
        weight = self.committee.weight_of_member(signed.signer)
        if weight == 0:
            self._count("vote_from_non_member")
            return
        tallies = self._prevotes if v.kind == VoteKind.PREVOTE else self._precommits
        tally = tallies.setdefault(v.round, _Tally())
        if signed.signer in tally.by_voter and v.block_hash in tally.by_voter[signed.signer]:
            return  # a copy
        earlier = tally.add(signed, weight)
        if earlier is not None:
            self._evidence(earlier.encode(), envelope, signed.signer, v.round, v.kind)
        self._heard(v.round, signed.signer)
        self._evaluate(now_ms)

    def on_time(self, now_ms: int) -> None:
        if self.decided:
            return
        for (step, r), deadline in sorted(self._timers.items()):
            if deadline <= now_ms:
                del self._timers[(step, r)]
                self._timeout(step, r, now_ms)
        if now_ms >= self._next_rebroadcast_ms:
            self._rebroadcast()
            self._rebroadcasts += 1
            self._next_rebroadcast_ms = now_ms + self.config.rebroadcast_after(self._rebroadcasts)
        self._evaluate(now_ms)

    def resume_voting(self, now_ms: int) -> None:
        """For a member that forgot its votes: sign nothing in any round it may have signed
        in before: up to the highest round heard of at this height, plus one, since its own
        timers may have run a round ahead of everyone it hears from. It keeps following the
        rounds with the others meanwhile (the stall timer moves a round on even when too few
        vote in it), so it votes again as soon as they reach that round, in step with them."""
        self.silent_below_round = max(self.round, max(self._senders, default=0)) + 2
        self._evaluate(now_ms)

    def nudge(self, now_ms: int) -> None:
        """Something to propose arrived (a transaction): a proposer that was waiting for one
        proposes now rather than at its retry time."""
        if self.step == Step.PROPOSE and self._propose_retry_ms is not None:
            self._propose_retry_ms = now_ms
            self._evaluate(now_ms)

    def next_wake_ms(self) -> int:
        wake = self._next_rebroadcast_ms
        if self._timers:
            wake = min(wake, min(self._timers.values()))
        if self._propose_retry_ms is not None:
            wake = min(wake, self._propose_retry_ms)
        return wake

    def drain(self) -> list[Action]:
        out, self.actions = self.actions, []
        return out

    # -- the rules --------------------------------------------------------------------------

    def _start_round(self, r: int, now_ms: int) -> None:  # line 11
        self.round, self.step, self.round_started_ms = r, Step.PROPOSE, now_ms
        self._propose_retry_ms = None
        self._count("rounds_started")
        if self._is_proposer(r):
            self._try_propose(now_ms)
        self._arm(Step.PROPOSE, r, now_ms + self.config.timeout_propose(r))  # line 21
        self._arm(Step.STALL, r, now_ms + self.config.timeout_stall(r))

    def _try_propose(self, now_ms: int) -> None:  # lines 14-19
        r = self.round
        if self._signer is None or r < self.silent_below_round or (r, PROPOSAL_SLOT) in self._mine:
            return
        pol = -1
        if self.valid is not None and self.valid[0] >= r:
            return  # only after a restart that lost our proposal of this very round: sit out
        if self.valid is not None:
            pol, block, block_bytes, block_hash = self.valid
        else:
            made = self.app.make_block(now_ms, r, self.round_started_ms)
            if isinstance(made, int):
                self._propose_retry_ms = max(made, now_ms + 1)
                return
            block, block_bytes = made, made.encode()
            block_hash = block_hash_of(block_bytes)
        self._propose_retry_ms = None
        proposal = Proposal(self.height, r, pol + 1, block_hash)
        signed = sign(proposal, self._signer, self.chain_id)
        envelope = signed.encode()
        self._emit(r, PROPOSAL_SLOT, codec.pack([envelope, block_bytes]))
        self.actions.append(Broadcast(envelope, block_bytes, self._pol_votes(pol, block_hash)))
        self._proposals[r] = _Proposed(signed, envelope, block, block_bytes, block_hash)
        self._validity[block_hash] = None  # we built it from our own state

    def _evaluate(self, now_ms: int) -> None:
        """Apply every rule whose condition holds, until none does."""
        for _ in range(64):  # each pass changes step or round; a few passes settle it
            if self.decided or not self._pass(now_ms):
                return

    def _pass(self, now_ms: int) -> bool:
        r, q = self.round, self.committee.quorum_weight
        retry = self._propose_retry_ms
        if self.step == Step.PROPOSE and retry is not None and now_ms >= retry:
            self._try_propose(now_ms)
        prop = self._proposals.get(r)
        prevotes = self._prevotes.get(r) or _Tally()
        if self.step == Step.PROPOSE and prop is not None:
            vr = prop.signed.record.pol_round
            if vr == -1:  # line 22
                ok = self._is_valid(prop) and (
                    self.locked is None or self.locked[3] == prop.block_hash
                )
                self._vote(VoteKind.PREVOTE, prop.block_hash if ok else NIL)
                self.step = Step.PREVOTE
                return True
            pol = self._prevotes.get(vr)
            if vr < r and pol is not None and pol.of(prop.block_hash) >= q:  # line 28
                ok = self._is_valid(prop) and (
                    self.locked is None or self.locked[0] <= vr or self.locked[3] == prop.block_hash
                )
                self._vote(VoteKind.PREVOTE, prop.block_hash if ok else NIL)
                self.step = Step.PREVOTE
                return True
        if self.step == Step.PREVOTE and prevotes.total >= q:  # line 34
            self._arm(Step.PREVOTE, r, now_ms + self.config.timeout_vote(r))
        if (
            self.step >= Step.PREVOTE
            and prop is not None
            and r not in self._done36
            and prevotes.of(prop.block_hash) >= q
            and self._is_valid(prop)
        ):  # line 36
            self._done36.add(r)
            entry = (r, prop.block, prop.block_bytes, prop.block_hash)
            if self.step == Step.PREVOTE:
                self.locked = entry
                pol_votes = self._pol_votes(r, prop.block_hash)
                lock: list[codec.Value] = [prop.block_bytes, list(pol_votes)]
                self._emit(r, LOCK_SLOT, codec.pack(lock))
                self._vote(VoteKind.PRECOMMIT, prop.block_hash)
                self.step = Step.PRECOMMIT
            self.valid = entry
            return True
        if self.step == Step.PREVOTE and prevotes.of(NIL) >= q:  # line 44
            self._vote(VoteKind.PRECOMMIT, NIL)
            self.step = Step.PRECOMMIT
            return True
        precommits = self._precommits.get(r)
        if precommits is not None and precommits.total >= q:  # line 47
            self._arm(Step.PRECOMMIT, r, now_ms + self.config.timeout_vote(r))
        for rr, tally in self._precommits.items():  # line 49, in any round
            p = self._proposals.get(rr)
            if p is not None and tally.of(p.block_hash) >= q and self._is_valid(p):
                self._decide(rr, p, tally)
                return False
        for rr in sorted(self._senders):  # line 55
            if rr > r and self.committee.weight_of(self._senders[rr]) > self.committee.f_tolerated:
                self._start_round(rr, now_ms)
                return True
        return False

    def _timeout(self, step: int, r: int, now_ms: int) -> None:
        self._fired.add((step, r))
        if r != self.round:
            return
        if step == Step.PROPOSE and self.step == Step.PROPOSE:  # line 57
            self._count("timeouts_propose")
            self._vote(VoteKind.PREVOTE, NIL)
            self.step = Step.PREVOTE
        elif step == Step.PREVOTE and self.step == Step.PREVOTE:  # line 61
            self._count("timeouts_prevote")
            self._vote(VoteKind.PRECOMMIT, NIL)
            self.step = Step.PRECOMMIT
        elif step == Step.PRECOMMIT:  # line 65
            self._count("timeouts_precommit")
            self._start_round(r + 1, now_ms)
        elif step == Step.STALL:
            self._count("timeouts_stall")
            self._start_round(r + 1, now_ms)

    def _decide(self, r: int, prop: _Proposed, tally: _Tally) -> None:
        votes = tally.votes_for(prop.block_hash)
        cert = CommitCertificate.from_votes(votes)
        self.decided = Decide(prop.block, prop.block_bytes, cert)
        self.actions.append(self.decided)
        self._timers.clear()

    # -- helpers ----------------------------------------------------------------------------

    def _vote(self, kind: int, block_hash: bytes) -> None:
        """Sign and send a vote, unless one for this slot was signed before (a restart):
        then that one is sent again, whatever the rules say now."""
        if self._signer is None or self.round < self.silent_below_round:
            return
        slot = (self.round, kind)
        old = self._mine.get(slot)
        if old is not None:
            self.actions.append(Broadcast(old))
            return
        signed = sign(Vote(self.height, self.round, kind, block_hash), self._signer, self.chain_id)
        envelope = signed.encode()
        self._emit(self.round, kind, envelope)
        self.actions.append(Broadcast(envelope, vote=signed.record))
        self.on_vote_local(signed, envelope)

    def on_vote_local(self, signed: Signed[Vote], envelope: bytes) -> None:
        """Count our own vote as any other (without re-evaluating mid-rule)."""
        v = signed.record
        tallies = self._prevotes if v.kind == VoteKind.PREVOTE else self._precommits
        tally = tallies.setdefault(v.round, _Tally())
        if signed.signer not in tally.by_voter:
            tally.add(signed, self.committee.weight_of_member(signed.signer))
            self._heard(v.round, signed.signer)

    def _emit(self, r: int, kind: int, data: bytes) -> None:
        if self._signer is None:
            return  # a follower's lock binds nothing: it never votes
        if kind != LOCK_SLOT:
            self._mine[(r, kind)] = data
        self.actions.append(Persist(Statement(self.height, r, kind, data)))

    def _restore(self, st: Statement) -> None:
        """Take back a statement persisted before a crash: never contradict it."""
        if st.height != self.height:
            return
        if st.kind == LOCK_SLOT:  # the block and the prevotes that justified locking on it
            block_bytes, pol = _split_lock(st.data)
            block = decode_block(block_bytes)
            for env in pol:
                vote = decode_statement(env, self.chain_id)
                if isinstance(vote.record, Vote) and vote.record.height == self.height:
                    self.on_vote_local(vote, env)
            if self.locked is None or st.round > self.locked[0]:
                self.locked = (st.round, block, block_bytes, block_hash_of(block_bytes))
                self.valid = self.locked
            return
        if st.kind == PROPOSAL_SLOT:
            env, block_bytes = _split(st.data)
            prop = decode_statement(env, self.chain_id)
            if isinstance(prop.record, Proposal):
                self._mine[(st.round, PROPOSAL_SLOT)] = st.data
                self._proposals[st.round] = _Proposed(
                    prop, env, decode_block(block_bytes), block_bytes, block_hash_of(block_bytes),
                )  # fmt: skip
        else:
            vote = decode_statement(st.data, self.chain_id)
            if isinstance(vote.record, Vote):
                self._mine[(st.round, st.kind)] = st.data
                self.on_vote_local(vote, st.data)
        self.round = max(self.round, st.round)

    def _rebroadcast(self) -> None:
        r = self.round
        for kind in (PROPOSAL_SLOT, VoteKind.PREVOTE, VoteKind.PRECOMMIT):
            data = self._mine.get((r, kind))
            if data is None:
                continue
            if kind == PROPOSAL_SLOT:
                env, block = _split(data)
                prop = self._proposals.get(r)
                pol = () if prop is None else self._pol_votes(
                    prop.signed.record.pol_round, prop.block_hash
                )  # fmt: skip
                self.actions.append(Broadcast(env, block, pol))
            else:
                self.actions.append(Broadcast(data))
        if (r, PROPOSAL_SLOT) not in self._mine and r > 0:
            data = self._mine.get((r - 1, VoteKind.PRECOMMIT))
            if data is not None:  # a member that missed the last round still needs it
                self.actions.append(Broadcast(data))

    def _pol_votes(self, pol_round: int, block_hash: bytes) -> tuple[bytes, ...]:
        tally = self._prevotes.get(pol_round) if pol_round >= 0 else None
        return () if tally is None else tuple(v.encode() for v in tally.votes_for(block_hash))

    def _evidence(self, first: bytes, second: bytes, offender: bytes, r: int, kind: int) -> None:
        key = (offender, r, kind)
        self._count("equivocations_seen")
        if key not in self._evidence_sent:
            self._evidence_sent.add(key)
            self.actions.append(EvidenceFound(first, second, offender))

    def _is_valid(self, prop: _Proposed) -> bool:
        verdict = self._validity.get(prop.block_hash, "unset")
        if verdict == "unset":
            verdict = self.app.validate(prop.block, prop.block_hash)
            if verdict is None:  # a refusal is not kept: it may depend on our clock
                self._validity[prop.block_hash] = verdict
            elif prop.block_hash not in self._refused:
                self._refused.add(prop.block_hash)
                self._count("invalid_proposals")
        return verdict is None

    def _arm(self, step: int, r: int, deadline: int) -> None:
        if (step, r) not in self._timers and (step, r) not in self._fired:
            self._timers[(step, r)] = deadline

    def _heard(self, r: int, member: bytes) -> None:
        self._senders.setdefault(r, set()).add(member)

    def _round_in_window(self, r: int) -> bool:
        return r <= self.round + self.config.rounds_ahead_max

    def _is_proposer(self, r: int) -> bool:
        return self.me is not None and self.committee.leader_for(self._view(r)) == self.me

    def _view(self, r: int) -> int:
        """Leader rotation over heights and rounds alike, so a dead member costs one round
        in n, wherever it falls."""
        return self.height + r

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    @property
    def proposer(self) -> bytes:
        return self.committee.leader_for(self._view(self.round))


def _split_lock(data: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """A persisted lock: pack([block bytes, [prevote envelopes of the lock's round]])."""
    raw = codec.unpack(data, max_bytes=len(data))
    if not (isinstance(raw, list) and len(raw) == 2):
        raise ValueError("a persisted lock is [block, [prevotes]]")
    block, pol = raw
    if not (isinstance(block, bytes) and isinstance(pol, list)):
        raise ValueError("a persisted lock is [block, [prevotes]]")
    return block, tuple(v for v in pol if isinstance(v, bytes))


def _split(data: bytes) -> tuple[bytes, bytes]:
    """A persisted proposal: pack([envelope, block bytes])."""
    raw = codec.unpack(data, max_bytes=len(data))
    if not (isinstance(raw, list) and len(raw) == 2):
        raise ValueError("a persisted proposal is [envelope, block]")
    env, block = raw
    if not (isinstance(env, bytes) and isinstance(block, bytes)):
        raise ValueError("a persisted proposal is [envelope, block]")
    return env, block
