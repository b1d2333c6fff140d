"""The Tendermint height machine driven by hand: four equal-weight members (quorum 3, f = 1),
a fake App, and statements signed by the test. Each test names the rule of Algorithm 1
(Buchman, Kwon, Milosevic 2018) it exercises by its line number."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.bft.block import Block
from consensus.bft.tendermint import (
    LOCK_SLOT,
    App,
    BftConfig,
    Broadcast,
    Decide,
    EvidenceFound,
    HeightMachine,
    Persist,
    Statement,
    Step,
)
from consensus.bft.votes import NIL, PROPOSAL_SLOT, Proposal, Vote, VoteKind, decode_statement
from consensus.committee import Committee
from p2p import codec
from tests.consensus.conftest import CHAIN_ID, members, proposal, vote

PV, PC = VoteKind.PREVOTE, VoteKind.PRECOMMIT
M = members(4, "tm")
OUTSIDER = members(1, "tm-outsider")[0]
COMMITTEE = Committee(tuple(m.public_key for m in M), (10, 10, 10, 10), 40)
CFG = BftConfig()
HEIGHT = 1


def leader(round_: int, height: int = HEIGHT, committee: Committee = COMMITTEE) -> int:
    """Index in M of the proposer of (height, round): leader_for(height + round)."""
    key = committee.leader_for(height + round_)
    return [m.public_key for m in M].index(key)


def make_block(tag: int, height: int = HEIGHT) -> Block:
    return Block(height, bytes(32), bytes(32), 1_000 + tag, M[0].public_key, (b"tx-%d" % tag,))


A, B = make_block(1), make_block(2)


class FakeApp(App):
    def __init__(self, block: Block = A) -> None:
        self.block = block
        self.invalid: dict[bytes, str] = {}
        self.validated: list[bytes] = []
        self.made = 0

    def validate(self, block: Block, block_hash: bytes) -> str | None:
        self.validated.append(block_hash)
        return self.invalid.get(block_hash)

    def make_block(self, now_ms: int, round_: int, round_started_ms: int) -> Block | int:
        self.made += 1
        return self.block


class Driver:
    """One machine with everything it emitted kept in order."""

    def __init__(
        self,
        me: int,
        app: FakeApp | None = None,
        *,
        committee: Committee = COMMITTEE,
        restored: list[Statement] | None = None,
        config: BftConfig = CFG,
        now: int = 0,
        may_vote: bool = True,
    ) -> None:
        self.app = app or FakeApp()
        self.now = now
        self.m = HeightMachine(
            HEIGHT,
            committee,
            config,
            CHAIN_ID,
            M[me] if me >= 0 else OUTSIDER,
            self.app,
            now,
            restored,
            may_vote=may_vote,
        )
        self.log: list = []
        self.pull()

    def pull(self) -> list:
        acts = self.m.drain()
        self.log.extend(acts)
        return acts

    def propose(
        self, round_: int, block: Block, pol_round: int = -1, by: int | None = None
    ) -> list:
        by = leader(round_) if by is None else by
        data = block.encode()
        s, env = proposal(M[by], HEIGHT, round_, block.block_hash(), pol_round)
        self.m.on_proposal(s, env, block, data, block.block_hash(), self.now)
        return self.pull()

    def votes(self, round_: int, kind: int, block_hash: bytes, voters) -> list:
        for i in voters:
            s, env = vote(M[i], HEIGHT, round_, kind, block_hash)
            self.m.on_vote(s, env, self.now)
        return self.pull()

    def at(self, now: int) -> list:
        self.now = now
        self.m.on_time(now)
        return self.pull()

    # -- reading what it did ---------------------------------------------------------------

    def my_votes(self, acts=None) -> list[Vote]:
        """Votes newly signed (persisted), in order; re-sends of old ones are not counted."""
        return signed_votes(acts if acts is not None else self.log)

    def persisted(self) -> list[Statement]:
        return [a.statement for a in self.log if isinstance(a, Persist)]


def signed_votes(acts) -> list[Vote]:
    out = []
    for a in acts:
        if isinstance(a, Persist) and a.statement.kind in (PV, PC):
            out.append(decode_statement(a.statement.data, CHAIN_ID).record)
    return out


def last_vote(acts) -> Vote:
    """The last vote newly signed among `acts` (each is persisted, then broadcast)."""
    vs = signed_votes(acts)
    assert vs, f"no vote signed in {acts}"
    sent = {a.envelope for a in acts if isinstance(a, Broadcast) and a.block is None}
    persisted = [
        a.statement.data for a in acts if isinstance(a, Persist) and a.statement.kind in (PV, PC)
    ]
    assert set(persisted) <= sent, "a signed vote was persisted but not sent"
    return vs[-1]


def proposals_sent(acts) -> set[bytes]:
    return {a.envelope for a in acts if isinstance(a, Broadcast) and a.block is not None}


def not_leader(round_: int) -> int:
    """A member that does not propose in `round_` nor in the next round."""
    return next(i for i in range(4) if i not in (leader(round_), leader(round_ + 1)))


def others(me: int, k: int) -> list[int]:
    return [i for i in range(4) if i != me][:k]


# -- the happy path ---------------------------------------------------------------------------


def test_proposer_proposes_at_once_and_persists_before_broadcasting() -> None:
    d = Driver(leader(0))
    kinds = [type(a).__name__ for a in d.log]
    # the proposal: persisted, then broadcast with its block; then the proposer's own prevote
    assert kinds[:4] == ["Persist", "Broadcast", "Persist", "Broadcast"]
    p_stmt, p_bc = d.log[0].statement, d.log[1]
    assert (p_stmt.height, p_stmt.round, p_stmt.kind) == (HEIGHT, 0, PROPOSAL_SLOT)
    assert p_bc.block == A.encode()
    assert codec.unpack(p_stmt.data) == [p_bc.envelope, A.encode()]
    prop = decode_statement(p_bc.envelope, CHAIN_ID).record
    assert prop == Proposal(HEIGHT, 0, 0, A.block_hash())
    assert d.my_votes() == [Vote(HEIGHT, 0, PV, A.block_hash())]
    assert d.app.made == 1
    assert d.m.step == Step.PREVOTE


def test_happy_path_decides_with_a_quorum_certificate() -> None:
    me = not_leader(0)
    d = Driver(me)
    acts = d.propose(0, A)
    assert last_vote(acts) == Vote(HEIGHT, 0, PV, A.block_hash())  # line 22
    acts = d.votes(0, PV, A.block_hash(), others(me, 2))
    assert last_vote(acts) == Vote(HEIGHT, 0, PC, A.block_hash())  # line 36
    assert d.m.locked is not None and d.m.locked[3] == A.block_hash()
    assert any(isinstance(a, Persist) and a.statement.kind == LOCK_SLOT for a in acts)
    acts = d.votes(0, PC, A.block_hash(), others(me, 2))
    decided = [a for a in acts if isinstance(a, Decide)]
    assert len(decided) == 1 and d.m.decided is decided[0]  # line 49
    cert = decided[0].cert
    assert decided[0].block == A and decided[0].block_bytes == A.encode()
    assert (cert.height, cert.round, cert.block_hash) == (HEIGHT, 0, A.block_hash())
    assert list(cert.signers) == sorted(cert.signers)
    assert COMMITTEE.weight_of(cert.valid_signers(CHAIN_ID)) >= COMMITTEE.quorum_weight
    assert M[me].public_key in cert.signers
    # decided: deaf to anything else at this height
    assert d.votes(0, PC, A.block_hash(), [others(me, 3)[2]]) == []
    assert d.at(10**6) == []


def test_validate_is_asked_once_per_block_hash() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.propose(0, A)
    d.votes(0, PV, A.block_hash(), others(me, 3))
    d.votes(0, PC, A.block_hash(), others(me, 3))
    assert d.m.decided is not None
    assert d.app.validated == [A.block_hash()]


def test_an_invalid_proposal_gets_a_nil_prevote_and_is_never_decided() -> None:
    me = not_leader(0)
    app = FakeApp()
    app.invalid[A.block_hash()] = "no"
    d = Driver(me, app)
    assert last_vote(d.propose(0, A)) == Vote(HEIGHT, 0, PV, NIL)
    d.votes(0, PV, A.block_hash(), others(me, 3))
    assert PC not in [v.kind for v in d.my_votes()]  # line 36 needs valid(v)
    d.votes(0, PC, A.block_hash(), others(me, 3))
    assert d.m.decided is None  # line 49 needs valid(v) too
    assert d.m.counts.get("invalid_proposals") == 1


def test_a_proposal_from_a_member_that_is_not_the_proposer_is_ignored() -> None:
    me = not_leader(0)
    d = Driver(me)
    wrong = next(i for i in range(4) if i not in (me, leader(0)))
    assert d.propose(0, A, by=wrong) == []
    assert d.m.step == Step.PROPOSE
    assert d.m.counts.get("proposal_from_non_proposer") == 1


def test_decides_a_block_of_an_earlier_round_when_its_precommits_arrive_late() -> None:
    """Line 49 holds for any round: a quorum of precommits for round 0's block decides it
    even though the machine has moved on to round 1."""
    me = not_leader(0)
    d = Driver(me)
    d.votes(1, PV, NIL, others(me, 2))  # f+1 of round 1: we move on without round 0's proposal
    assert d.m.round == 1
    d.propose(0, A)  # the round-0 proposal, late
    acts = d.votes(0, PC, A.block_hash(), others(me, 3))
    assert any(isinstance(a, Decide) for a in acts)
    assert d.m.decided is not None and d.m.decided.cert.round == 0


# -- timeouts and round changes -------------------------------------------------------------


def test_proposer_timeout_prevotes_nil_and_moves_to_the_next_round_and_proposer() -> None:
    nxt = leader(1)
    d = Driver(nxt)  # proposes in round 1, not in round 0
    assert d.m.proposer == M[leader(0)].public_key
    assert d.at(CFG.timeout_propose(0) - 1) == []
    acts = d.at(CFG.timeout_propose(0))  # line 57
    assert last_vote(acts) == Vote(HEIGHT, 0, PV, NIL)
    assert d.m.counts["timeouts_propose"] == 1
    acts = d.votes(0, PV, NIL, others(nxt, 2))  # line 44: a quorum of nil prevotes
    assert last_vote(acts) == Vote(HEIGHT, 0, PC, NIL)
    d.votes(0, PC, NIL, others(nxt, 2))  # line 47 arms the precommit timeout
    assert d.m.round == 0
    acts = d.at(d.now + CFG.timeout_vote(0))  # line 65
    assert d.m.round == 1
    assert d.m.proposer == COMMITTEE.leader_for(HEIGHT + 1) == M[nxt].public_key
    proposals = proposals_sent(acts)
    assert len(proposals) == 1
    assert decode_statement(proposals.pop(), CHAIN_ID).record.round == 1


def test_prevote_timeout_precommits_nil_after_a_split_vote() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.propose(0, A)  # prevote A
    # one A, one nil from the others: a quorum of prevotes, but for nothing in particular
    others2 = others(me, 2)
    d.votes(0, PV, A.block_hash(), others2[:1])
    d.votes(0, PV, NIL, others2[1:])
    assert d.m.step == Step.PREVOTE
    acts = d.at(d.now + CFG.timeout_vote(0))  # line 61
    assert last_vote(acts) == Vote(HEIGHT, 0, PC, NIL)
    assert d.m.counts["timeouts_prevote"] == 1


def test_timeouts_grow_with_the_round() -> None:
    assert CFG.timeout_propose(3) == CFG.timeout_propose_ms + 3 * CFG.timeout_propose_delta_ms
    assert CFG.timeout_vote(2) == CFG.timeout_vote_ms + 2 * CFG.timeout_vote_delta_ms
    me = next(i for i in range(4) if i not in (leader(0), leader(3)))
    d = Driver(me)
    d.votes(3, PV, NIL, others(me, 2))  # f+1 in round 3: jump (line 55)
    assert d.m.round == 3
    assert d.my_votes(d.at(CFG.timeout_propose(0))) == []  # round 0's timer no longer counts
    assert d.m.step == Step.PROPOSE
    assert d.my_votes(d.at(CFG.timeout_propose(3) - 1)) == []
    acts = d.at(CFG.timeout_propose(3))
    # prevote nil on the timeout; with the two nil prevotes already in, a quorum: precommit nil
    assert d.my_votes(acts) == [Vote(HEIGHT, 3, PV, NIL), Vote(HEIGHT, 3, PC, NIL)]


def test_next_wake_is_the_earliest_timer() -> None:
    me = not_leader(0)
    d = Driver(me, now=100)
    assert d.m.next_wake_ms() == 100 + min(CFG.timeout_propose(0), CFG.rebroadcast_ms)


def test_rebroadcast_resends_the_current_rounds_statements() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.propose(0, A)
    sent = [a.envelope for a in d.log if isinstance(a, Broadcast)]
    acts = d.at(CFG.rebroadcast_ms)
    again = [a.envelope for a in acts if isinstance(a, Broadcast)]
    assert again == sent
    assert not [a for a in acts if isinstance(a, Persist)]  # nothing newly signed


def test_rebroadcasts_back_off_while_the_height_stalls() -> None:
    """Each re-send waits twice as long as the last, up to rebroadcast_backoff_max times
    rebroadcast_ms: a stalled (overloaded) committee is not fed a round of frames every
    second. Timeouts are out of reach here, so only re-sends go out."""
    cfg = BftConfig(timeout_propose_ms=10**9, timeout_vote_ms=10**9)
    assert [cfg.rebroadcast_after(k) for k in range(6)] == [1_000, 2_000, 4_000, 8_000,
                                                             8_000, 8_000]  # fmt: skip
    d = Driver(not_leader(0), config=cfg)
    d.propose(0, A)
    resent = [t for t in range(100, 40_001, 100)
              if any(isinstance(a, Broadcast) for a in d.at(t))]  # fmt: skip
    assert resent == [1_000, 3_000, 7_000, 15_000, 23_000, 31_000, 39_000]
    assert d.m.next_wake_ms() == 47_000


# -- locking ---------------------------------------------------------------------------------


def lock_on_a_in_round_0(me: int) -> Driver:
    """Round 0: A proposed, a quorum prevotes A, we precommit A (lock); the others precommit
    nil, so round 0 does not decide and times out into round 1."""
    d = Driver(me)
    d.propose(0, A)
    d.votes(0, PV, A.block_hash(), others(me, 2))
    assert d.m.locked is not None and d.m.locked[0] == 0 and d.m.locked[3] == A.block_hash()
    d.votes(0, PC, NIL, others(me, 2))
    d.at(d.now + CFG.timeout_vote(0))
    assert d.m.round == 1 and d.m.decided is None
    return d


def test_a_locked_member_prevotes_nil_for_a_different_fresh_block() -> None:
    me = not_leader(0)
    d = lock_on_a_in_round_0(me)
    acts = d.propose(1, B)  # fresh (pol round -1): line 22 with lockedValue != B
    assert last_vote(acts) == Vote(HEIGHT, 1, PV, NIL)


def test_a_locked_member_prevotes_its_locked_block_when_proposed_fresh() -> None:
    me = not_leader(0)
    d = lock_on_a_in_round_0(me)
    assert last_vote(d.propose(1, A)) == Vote(HEIGHT, 1, PV, A.block_hash())


def test_a_locked_member_prevotes_a_block_with_a_later_proof_of_lock() -> None:
    """Line 28: B comes with pol round 1, in which a quorum prevoted B; our lock (round 0)
    is older than that, so we prevote B."""
    me = not_leader(0)
    d = lock_on_a_in_round_0(me)
    # round 1: we miss the proposal, time out (prevote nil) while the others prevote B
    d.at(d.now + CFG.timeout_propose(1))
    assert d.my_votes()[-1] == Vote(HEIGHT, 1, PV, NIL)
    d.votes(1, PV, B.block_hash(), others(me, 3))
    d.at(d.now + CFG.timeout_vote(1))  # no proposal for B seen: precommit nil
    assert d.my_votes()[-1] == Vote(HEIGHT, 1, PC, NIL)
    d.votes(1, PC, NIL, others(me, 2))
    d.at(d.now + CFG.timeout_vote(1))
    assert d.m.round == 2
    assert d.m.locked[3] == A.block_hash()
    acts = d.propose(2, B, pol_round=1)
    assert last_vote(acts) == Vote(HEIGHT, 2, PV, B.block_hash())


def test_a_proof_of_lock_without_a_quorum_of_prevotes_is_not_enough() -> None:
    me = not_leader(0)
    d = lock_on_a_in_round_0(me)
    d.at(d.now + CFG.timeout_propose(1))
    d.votes(1, PV, B.block_hash(), others(me, 1))  # only one prevote for B
    d.votes(1, PV, NIL, others(me, 3)[1:])
    d.at(d.now + CFG.timeout_vote(1))
    d.votes(1, PC, NIL, others(me, 2))
    d.at(d.now + CFG.timeout_vote(1))
    assert d.m.round == 2
    acts = d.propose(2, B, pol_round=1)
    assert d.my_votes(acts) == []  # line 28 does not hold: wait for the timeout
    acts = d.at(d.now + CFG.timeout_propose(2))
    assert last_vote(acts) == Vote(HEIGHT, 2, PV, NIL)


def test_a_proof_of_lock_older_than_our_lock_does_not_unlock() -> None:
    """Locked on A in round 1; B comes in round 2 with a pol round 0 quorum: lockedRound 1 >
    vr 0, so we prevote nil (line 29's condition)."""
    me = not_leader(1)
    d = Driver(me)
    d.at(CFG.timeout_propose(0))  # round 0: no proposal seen by us, prevote nil
    d.votes(0, PV, B.block_hash(), others(me, 3))  # but the others prevoted B
    d.at(d.now + CFG.timeout_vote(0))
    d.votes(0, PC, NIL, others(me, 2))
    d.at(d.now + CFG.timeout_vote(0))
    assert d.m.round == 1
    d.propose(1, A)
    d.votes(1, PV, A.block_hash(), others(me, 2))
    assert d.m.locked[0] == 1 and d.m.locked[3] == A.block_hash()
    d.votes(1, PC, NIL, others(me, 2))
    d.at(d.now + CFG.timeout_vote(1))
    assert d.m.round == 2
    acts = d.propose(2, B, pol_round=0)
    assert last_vote(acts) == Vote(HEIGHT, 2, PV, NIL)


def test_a_member_that_saw_a_polka_proposes_the_valid_block_with_its_round() -> None:
    """Line 15-16: the next proposer, having seen a quorum of prevotes for A in round 0,
    proposes A again with pol round 0 rather than a block of its own."""
    me = leader(1)
    app = FakeApp(block=B)
    d = Driver(me, app)
    d.propose(0, A)
    d.votes(0, PV, A.block_hash(), others(me, 2))
    d.votes(0, PC, NIL, others(me, 2))
    acts = d.at(d.now + CFG.timeout_vote(0))
    props = [a for a in acts if isinstance(a, Broadcast) and a.block is not None]
    assert len(proposals_sent(acts)) == 1
    assert props[0].block == A.encode()
    assert decode_statement(props[0].envelope, CHAIN_ID).record == Proposal(
        HEIGHT, 1, 1, A.block_hash()
    )
    assert app.made == 0
    # the proof of lock travels with it: round 0's prevotes for A, a quorum of them
    pol = [decode_statement(e, CHAIN_ID) for e in props[0].pol]
    assert {(s.record.round, s.record.kind, s.record.block_hash) for s in pol} == {
        (0, PV, A.block_hash())
    }
    assert COMMITTEE.weight_of(s.signer for s in pol) >= COMMITTEE.quorum_weight


# -- restarts --------------------------------------------------------------------------------


def test_a_restarted_machine_never_signs_a_different_vote_for_a_slot() -> None:
    me = not_leader(0)
    d = lock_on_a_in_round_0(me)
    before = {(v.round, v.kind): v for v in d.my_votes()}
    assert before[(0, PV)].block_hash == A.block_hash()
    assert before[(0, PC)].block_hash == A.block_hash()
    restored = d.persisted()
    # the restart: no proposal seen again in round 0, so the rules alone would prevote nil
    r = Driver(me, restored=restored, now=d.now)
    assert r.m.locked is not None and r.m.locked[3] == A.block_hash() and r.m.locked[0] == 0
    assert r.m.round == 0  # the latest round it had signed in
    r.votes(0, PV, NIL, others(me, 3))
    r.votes(0, PC, NIL, others(me, 3))
    r.at(r.now + CFG.timeout_propose(1))
    r.propose(1, B)
    r.votes(1, PV, NIL, others(me, 3))
    r.at(r.now + CFG.timeout_vote(1) * 3)
    after: dict[tuple[int, int], set[bytes]] = {}
    for v in before.values():
        after.setdefault((v.round, v.kind), set()).add(v.block_hash)
    for v in r.my_votes():
        after.setdefault((v.round, v.kind), set()).add(v.block_hash)
    assert all(len(hashes) == 1 for hashes in after.values()), after
    # and the lock survived: a fresh B is refused
    assert Vote(HEIGHT, 1, PV, NIL) in r.my_votes()


def test_a_restarted_machine_resends_its_old_vote_instead_of_signing_a_new_one() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.propose(0, A)  # prevote A, persisted
    old = [a for a in d.log if isinstance(a, Broadcast)][-1].envelope
    r = Driver(me, restored=d.persisted(), now=d.now)
    acts = r.at(CFG.timeout_propose(0))  # the timeout would prevote nil
    assert [a for a in acts if isinstance(a, Persist) and a.statement.kind == PV] == []
    sent = [a.envelope for a in acts if isinstance(a, Broadcast)]
    assert old in sent
    assert all(decode_statement(e, CHAIN_ID).record.block_hash == A.block_hash() for e in sent)


def test_a_restarted_proposer_does_not_propose_a_second_block() -> None:
    me = leader(0)
    d = Driver(me)
    assert d.app.made == 1
    app2 = FakeApp(block=B)  # after the restart it would build something else
    r = Driver(me, app2, restored=d.persisted())
    assert app2.made == 0
    assert [a for a in r.log if isinstance(a, Persist) and a.statement.kind == PROPOSAL_SLOT] == []
    acts = r.at(CFG.rebroadcast_ms)
    props = [a for a in acts if isinstance(a, Broadcast) and a.block is not None]
    assert [p.block for p in props] == [A.encode()]


def test_restored_statements_of_another_height_are_ignored() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.propose(0, A)
    moved = [dataclasses.replace(s, height=s.height + 1) for s in d.persisted()]
    r = Driver(me, restored=moved)
    assert r.m.locked is None
    assert last_vote(r.propose(0, B)) == Vote(HEIGHT, 0, PV, B.block_hash())


# -- equivocation ----------------------------------------------------------------------------


def test_a_second_different_vote_yields_exactly_one_evidence() -> None:
    me = not_leader(0)
    d = Driver(me)
    bad = others(me, 1)[0]
    s1, e1 = vote(M[bad], HEIGHT, 0, PV, A.block_hash())
    s2, e2 = vote(M[bad], HEIGHT, 0, PV, B.block_hash())
    s3, e3 = vote(M[bad], HEIGHT, 0, PV, NIL)
    d.m.on_vote(s1, e1, 0)
    d.m.on_vote(s1, e1, 0)  # a duplicate is not equivocation
    d.m.on_vote(s2, e2, 0)
    d.m.on_vote(s3, e3, 0)
    d.m.on_vote(s2, e2, 0)
    found = [a for a in d.pull() if isinstance(a, EvidenceFound)]
    assert found == [EvidenceFound(e1, e2, M[bad].public_key)]
    assert d.m.counts["equivocations_seen"] >= 2
    # a different slot (precommit) is another fault
    s4, e4 = vote(M[bad], HEIGHT, 0, PC, A.block_hash())
    s5, e5 = vote(M[bad], HEIGHT, 0, PC, NIL)
    d.m.on_vote(s4, e4, 0)
    d.m.on_vote(s5, e5, 0)
    assert [a for a in d.pull() if isinstance(a, EvidenceFound)] == [
        EvidenceFound(e4, e5, M[bad].public_key)
    ]


def test_two_different_proposals_for_one_round_yield_evidence() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.propose(0, A)
    acts = d.propose(0, B)
    found = [a for a in acts if isinstance(a, EvidenceFound)]
    assert len(found) == 1 and found[0].offender == M[leader(0)].public_key
    p1 = decode_statement(found[0].first, CHAIN_ID).record
    p2 = decode_statement(found[0].second, CHAIN_ID).record
    assert {p1.block_hash, p2.block_hash} == {A.block_hash(), B.block_hash()}
    assert last_vote(d.log) == Vote(HEIGHT, 0, PV, A.block_hash())  # the first one stands


def test_a_relayed_conflicting_proposal_yields_evidence() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.propose(0, A)
    s, env = proposal(M[leader(0)], HEIGHT, 0, B.block_hash())
    d.m.on_relayed_proposal(s, env)
    found = [a for a in d.pull() if isinstance(a, EvidenceFound)]
    assert len(found) == 1 and found[0].second == env


# -- who and what is listened to -------------------------------------------------------------


def test_statements_from_non_members_are_ignored() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.propose(0, A)
    for k in (PV, PC):
        s, env = vote(OUTSIDER, HEIGHT, 0, k, A.block_hash())
        d.m.on_vote(s, env, 0)
    d.votes(0, PV, A.block_hash(), others(me, 1))
    assert d.m.step == Step.PREVOTE  # 2 member prevotes + the outsider's: no quorum
    assert d.m.counts["vote_from_non_member"] == 2
    s, env = proposal(OUTSIDER, HEIGHT, 1, B.block_hash())
    d.m.on_proposal(s, env, B, B.encode(), B.block_hash(), 0)
    assert 1 not in d.m._proposals


def test_a_non_member_machine_follows_but_never_signs() -> None:
    d = Driver(-1)
    d.propose(0, A)
    d.votes(0, PV, A.block_hash(), [0, 1, 2])
    d.votes(0, PC, A.block_hash(), [0, 1, 2])
    assert d.m.decided is not None
    assert [a for a in d.log if isinstance(a, Broadcast)] == []
    assert [a for a in d.log if isinstance(a, Persist) and a.statement.kind != LOCK_SLOT] == []


def test_statements_for_other_heights_are_ignored() -> None:
    me = not_leader(0)
    d = Driver(me)
    for i in others(me, 3):
        s, env = vote(M[i], HEIGHT + 1, 5, PV, NIL)
        d.m.on_vote(s, env, 0)
    assert d.m.round == 0 and d.m._prevotes == {}


def test_f_plus_one_weight_from_a_higher_round_makes_it_jump() -> None:
    me = not_leader(0)
    d = Driver(me)
    d.votes(4, PV, NIL, others(me, 1))  # weight 10, f = 10: not more than f
    assert d.m.round == 0
    d.votes(4, PC, NIL, others(me, 1))  # the same member again: still 10
    assert d.m.round == 0
    d.votes(4, PV, NIL, others(me, 2)[1:])  # a second member: 20 > f (line 55)
    assert d.m.round == 4
    assert d.m.step == Step.PROPOSE


def test_a_proposal_counts_toward_the_jump() -> None:
    me = not_leader(0)
    d = Driver(me)
    r = 3
    p = leader(r)
    voter = next(i for i in range(4) if i not in (me, p))
    d.propose(r, B)
    assert d.m.round == 0
    d.votes(r, PV, NIL, [voter])
    assert d.m.round == r


def test_statements_beyond_rounds_ahead_max_are_ignored() -> None:
    cfg = dataclasses.replace(CFG, rounds_ahead_max=8)
    me = not_leader(0)
    d = Driver(me, config=cfg)
    d.votes(9, PV, NIL, others(me, 3))
    assert d.m.round == 0
    assert d.m._prevotes == {} and d.m._senders == {}
    far = 9
    d.propose(far, B)
    assert far not in d.m._proposals
    d.votes(8, PV, NIL, others(me, 2))  # at the edge of the window: taken
    assert d.m.round == 8


def test_weighted_jump_uses_stake_not_heads() -> None:
    committee = Committee(tuple(m.public_key for m in M), (1, 1, 1, 7), 10)
    assert committee.f_tolerated == 3
    heavy = 3
    me = next(i for i in range(3) if committee.leader_for(HEIGHT) != M[i].public_key)
    d = Driver(me, committee=committee)
    light = [i for i in range(3) if i != me]
    for i in light:
        s, env = vote(M[i], HEIGHT, 2, PV, NIL)
        d.m.on_vote(s, env, 0)
    assert d.m.round == 0  # weight 2 <= f = 3
    s, env = vote(M[heavy], HEIGHT, 5, PV, NIL)
    d.m.on_vote(s, env, 0)
    assert d.m.round == 5  # weight 7 alone > f


def test_weighted_quorum_needs_stake_not_heads() -> None:
    committee = Committee(tuple(m.public_key for m in M), (1, 1, 1, 7), 10)
    assert committee.quorum_weight == 7
    me = 0
    d = Driver(me, committee=committee)
    d.m.on_proposal(*_proposal_args(committee, 0, A), 0)
    d.pull()
    d.votes(0, PV, A.block_hash(), [1, 2])  # 3 of 4 heads, weight 3
    assert d.m.step == Step.PREVOTE and d.m.locked is None
    d.votes(0, PV, A.block_hash(), [3])  # the heavy member: quorum
    assert d.m.locked is not None


def _proposal_args(committee: Committee, round_: int, block: Block):
    key = committee.leader_for(HEIGHT + round_)
    who = [m.public_key for m in M].index(key)
    s, env = proposal(M[who], HEIGHT, round_, block.block_hash())
    return s, env, block, block.encode(), block.block_hash()


@pytest.mark.parametrize("seed", range(3))
def test_four_machines_wired_together_agree(seed: int) -> None:
    """All four machines, each message delivered to every other in a seeded order."""
    import random

    rng = random.Random(seed)
    apps = [FakeApp(make_block(10 + i)) for i in range(4)]
    ms = [HeightMachine(HEIGHT, COMMITTEE, CFG, CHAIN_ID, M[i], apps[i], 0) for i in range(4)]
    queue: list[tuple[int, Broadcast]] = []

    def pump(i: int) -> None:
        for a in ms[i].drain():
            if isinstance(a, Broadcast):
                queue.extend((j, a) for j in range(4) if j != i)

    for i in range(4):
        pump(i)
    now = 0
    while not all(m.decided for m in ms):
        while queue:
            j, a = queue.pop(rng.randrange(len(queue)))
            s = decode_statement(a.envelope, CHAIN_ID)
            if a.block is None:
                ms[j].on_vote(s, a.envelope, now)
            else:
                from consensus.bft.block import decode_block

                blk = decode_block(a.block)
                ms[j].on_proposal(s, a.envelope, blk, a.block, blk.block_hash(), now)
            pump(j)
        now += 100
        assert now < 60_000
        for i in range(4):
            ms[i].on_time(now)
            pump(i)
    hashes = {m.decided.cert.block_hash for m in ms}
    assert len(hashes) == 1
    assert hashes == {make_block(10 + leader(0)).block_hash()}


def test_an_equivocators_votes_count_for_both_blocks_whichever_came_first() -> None:
    """The equivocator's second vote still counts toward its block (and once toward the
    total), so which of its votes a member heard first cannot keep a quorum from forming."""
    me = not_leader(0)
    d = Driver(me)
    honest, bad = others(me, 2)
    d.votes(0, PV, B.block_hash(), [bad])  # the equivocator's other vote arrives first
    d.propose(0, A)  # we prevote A
    d.votes(0, PV, A.block_hash(), [honest])
    assert d.m.step == Step.PREVOTE  # A has 2 of 3 needed
    acts = d.votes(0, PV, A.block_hash(), [bad])
    assert [a for a in acts if isinstance(a, EvidenceFound)] != []
    assert last_vote(acts) == Vote(HEIGHT, 0, PC, A.block_hash())  # A has its quorum


def test_a_member_that_may_not_vote_stays_silent_then_resumes_past_every_round_heard() -> None:
    me = leader(0)  # it would propose at once
    d = Driver(me, may_vote=False)
    assert d.app.made == 0
    d.votes(0, PV, NIL, others(me, 1))
    d.votes(2, PV, NIL, others(me, 1))  # one member in round 2: weight 10, no jump
    d.at(CFG.timeout_propose(0))
    assert d.m.round == 0
    assert [a for a in d.log if isinstance(a, Broadcast)] == []
    assert d.my_votes() == []
    d.m.resume_voting(d.now)
    d.pull()
    # two rounds past the highest heard: its own timers may have run one round ahead; it
    # keeps following the rounds (stall timers) and signs nothing before round 4
    assert d.m.round == 0 and d.m.silent_below_round == 4
    for _ in range(200):  # bounded: each step fires at least one timer
        if d.m.round >= 4 and d.my_votes():
            break
        d.at(max(d.now + 1, d.m.next_wake_ms()))
    assert d.m.round == 4
    assert {v.round for v in d.my_votes()} == {4}


def test_stall_timer_ends_a_round_nobody_else_shares() -> None:
    """Alone in its round (no quorum of anything ever arrives), a member still moves on."""
    me = not_leader(0)
    d = Driver(me)
    d.at(CFG.timeout_stall(0) - 1)
    assert d.m.round == 0
    d.at(CFG.timeout_stall(0))
    assert d.m.round == 1
    assert d.m.counts["timeouts_stall"] == 1


# -- four machines and a hand-driven network ---------------------------------------------------


class Cluster:
    """The four members' machines; each broadcast waits in its sender's outbox until the test
    delivers it (to whom it chooses), so any interleaving can be built by hand."""

    def __init__(self) -> None:
        self.apps = [FakeApp(make_block(10 + i)) for i in range(4)]
        self.ms = [
            HeightMachine(HEIGHT, COMMITTEE, CFG, CHAIN_ID, M[i], self.apps[i], 0) for i in range(4)
        ]
        self.persisted: list[list[Statement]] = [[] for _ in range(4)]
        self.out: list[list[Broadcast]] = [[] for _ in range(4)]
        self.now = 0
        for i in range(4):
            self.pump(i)

    def pump(self, i: int) -> None:
        for a in self.ms[i].drain():
            if isinstance(a, Persist):
                self.persisted[i].append(a.statement)
            elif isinstance(a, Broadcast):
                self.out[i].append(a)

    def deliver(self, a: Broadcast, j: int) -> None:
        from consensus.bft.block import decode_block

        m = self.ms[j]
        s = decode_statement(a.envelope, CHAIN_ID)
        if a.block is None:
            m.on_vote(s, a.envelope, self.now)
        else:  # as the engine does: the proof-of-lock votes first, then the proposal
            for v in getattr(a, "pol", ()):
                m.on_vote(decode_statement(v, CHAIN_ID), v, self.now)
            blk = decode_block(a.block)
            m.on_proposal(s, a.envelope, blk, a.block, blk.block_hash(), self.now)
        self.pump(j)

    def send(self, i: int, to, which=lambda a: True) -> None:
        keep = []
        for a in self.out[i]:
            if which(a):
                for j in to:
                    self.deliver(a, j)
            else:
                keep.append(a)
        self.out[i] = keep

    def flood(self) -> None:
        for i in range(4):
            self.send(i, [j for j in range(4) if j != i])

    def at(self, now: int, nodes=range(4)) -> None:
        self.now = now
        for i in nodes:
            self.ms[i].on_time(now)
            self.pump(i)

    def restart(self, i: int) -> None:
        self.ms[i] = HeightMachine(
            HEIGHT, COMMITTEE, CFG, CHAIN_ID, M[i], self.apps[i], self.now, list(self.persisted[i])
        )
        self.out[i] = []
        self.pump(i)

    def run_reliably(self, until_ms: int) -> None:
        """Everything to everyone, time in 100 ms steps, until a decision or `until_ms`."""
        while self.now < until_ms and not any(m.decided for m in self.ms):
            self.flood()
            self.at(self.now + 100)


def is_prevote(a: Broadcast) -> bool:
    return a.block is None and decode_statement(a.envelope, CHAIN_ID).record.kind == PV


def split_lock_in_round_0(c: Cluster) -> tuple[int, int, int, int]:
    """Round 0 ends with p and x locked on p's block A, while y and d never saw A's polka
    (x's prevote never reached them) and precommitted nil. Everyone moves to round 1."""
    p = leader(0)
    x, y, d = [i for i in range(4) if i != p]
    c.send(p, [x, y], lambda a: a.block is not None)  # d never gets the proposal
    c.at(CFG.timeout_propose(0), [d])  # d prevotes nil
    for src, dst in [(p, [x, y, d]), (x, [p]), (y, [p, x, d]), (d, [y])]:
        c.send(src, dst, is_prevote)
    assert [bool(c.ms[i].locked) for i in (p, x, y, d)] == [True, True, False, False]
    c.at(CFG.timeout_propose(0) + CFG.timeout_vote(0) + 1)  # y and d: precommit nil
    c.out[x] = [a for a in c.out[x] if not is_prevote(a)]  # x's prevote is lost for good
    c.flood()
    c.at(c.now + CFG.timeout_vote(0) + 1)
    assert [m.round for m in c.ms] == [1, 1, 1, 1]
    assert not any(m.decided for m in c.ms)
    return p, x, y, d


def test_a_split_lock_resolves_when_the_locked_members_keep_their_proof_of_lock() -> None:
    c = Cluster()
    p, _, _, _ = split_lock_in_round_0(c)
    c.run_reliably(60_000)
    decided = [m.decided for m in c.ms if m.decided]
    assert decided, f"no decision by {c.now} ms, rounds {[m.round for m in c.ms]}"
    assert {d.cert.block_hash for d in decided} == {make_block(10 + p).block_hash()}


def test_a_split_lock_resolves_after_the_locked_members_restart() -> None:
    c = Cluster()
    p, x, _, _ = split_lock_in_round_0(c)
    c.restart(p)
    c.restart(x)
    assert c.ms[p].locked is not None and c.ms[x].locked is not None
    c.run_reliably(120_000)  # two minutes of a perfect network, four honest members
    assert any(m.decided for m in c.ms), f"no decision, rounds {[m.round for m in c.ms]}"
