"""Consensus engines wired together by the in-memory network of conftest.py: they agree on
every block (same hashes, same state roots) through shuffled and lossy delivery, isolated
members and followers catch up by block sync, equivocation gets its offender slashed and
jailed everywhere, and restarts never make a member contradict itself."""

from __future__ import annotations

import collections
import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.bft.block import decode_block
from consensus.bft.messages import (
    TAG_BLOCKS,
    TAG_RELAY,
    TAG_VOTE,
    decode_frame,
    encode_batch,
    encode_frame,
)
from consensus.bft.votes import VoteKind, decode_statement
from consensus.chain import Chain
from consensus.engine import ClientTx, ConsensusEngine, EngineInput, FrameIn, SendFrame
from consensus.ledger.evidence import EQUIVOCATION_SLASH_BPS, Equivocation
from consensus.ledger.params import BPS
from consensus.ledger.tx import decode_tx
from tests.consensus.conftest import (
    CHAIN_ID,
    OPERATOR_STAKE,
    Net,
    make_genesis,
    make_params,
    members,
    transfer,
    users,
    vote,
)

OPS = members(4, "net")
OUT = members(1, "net-follower")[0]
U = users(6)
SINK = members(1, "net-sink")[0].public_key


def genesis():
    return make_genesis(OPS, U)


class Clients:
    """Users sending transfers of 1 to SINK through members chosen by a seeded rng."""

    def __init__(self, net: Net, rng: random.Random) -> None:
        self.net, self.rng = net, rng
        self.nonces = [0] * len(U)
        self.sent = 0

    def send(self, k: int, via: list[bytes] | None = None) -> None:
        via = via or [o.public_key for o in OPS]
        for _ in range(k):
            u = self.rng.randrange(len(U))
            self.net.submit(self.rng.choice(via), transfer(U[u], self.nonces[u], SINK))
            self.nonces[u] += 1
            self.sent += 1


def committed_txs(net: Net, key: bytes) -> int:
    return sum(c.txs for c in net.nodes[key].commits)


def sink_balance(net: Net, key: bytes) -> int:
    return net.nodes[key].chain.state.balance(SINK)


# -- agreement ------------------------------------------------------------------------------


def test_four_members_commit_the_same_blocks_with_a_stream_of_transfers() -> None:
    net = Net(genesis(), OPS, seed=1)
    clients = Clients(net, random.Random(1))
    for _ in range(40):
        clients.send(3)
        net.tick(50)
    keys = list(net.nodes)
    net.run_until(lambda: all(sink_balance(net, k) == clients.sent for k in keys))
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    assert min(net.heights()) >= 3
    for k in keys:
        node = net.nodes[k]
        assert committed_txs(net, k) == clients.sent
        assert [c.block_hash for c in node.commits] == [
            net.canonical[h] for h in range(1, node.height + 1)
        ]
        assert node.commits[-1].state_root == node.chain.head_root
        assert len(node.engine.mempool) == 0
        assert all(v.accepted for v in node.verdicts.values())
    # the blocks are real blocks with real certificates: a fresh chain replays them
    replay = Chain.from_genesis(net.genesis)
    for c in net.nodes[keys[0]].commits:
        replay.apply(replay.check_commit(c.block, c.cert))
    assert replay.head_root == net.nodes[keys[0]].chain.head_root


def test_shuffled_delivery_with_dropped_frames_still_commits() -> None:
    net = Net(genesis(), OPS, seed=7, shuffle=True, drop=0.10)
    clients = Clients(net, random.Random(7))
    for _ in range(30):
        clients.send(2)
        net.tick(50)
    keys = list(net.nodes)
    net.run_until(lambda: all(sink_balance(net, k) == clients.sent for k in keys), max_ms=120_000)
    net.run_until(lambda: len(set(net.heights())) == 1, max_ms=30_000)
    net.assert_same_head()
    assert net.frames_dropped > 0
    assert min(net.heights()) >= 3


def test_an_isolated_member_catches_up_and_reaches_the_same_head() -> None:
    net = Net(genesis(), OPS, seed=3)
    clients = Clients(net, random.Random(3))
    lonely = OPS[2].public_key
    rest = [k for k in net.nodes if k != lonely]
    net.run_until(net.all_at_least(2))
    net.isolated.add(lonely)
    start = net.nodes[lonely].height
    for _ in range(40):
        clients.send(2, via=rest)
        net.tick(50)
    net.run_until(net.all_at_least(start + 6, rest))
    assert net.nodes[lonely].height == start  # it really heard nothing
    net.isolated.clear()
    net.run_until(lambda: net.nodes[lonely].height >= max(net.heights(rest)), max_ms=20_000)
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    assert net.nodes[lonely].engine.counts.get("blocks_synced", 0) >= 6
    # Equal heights do not mean every transfer is in: the rest may still hold some for the
    # next block (which order they land in depends on the proposers, so on state roots).
    net.run_until(lambda: all(sink_balance(net, k) == clients.sent for k in net.nodes))
    net.assert_same_head()
    assert sink_balance(net, lonely) == clients.sent
    # and it takes part again: the next blocks carry its precommit too
    h = net.nodes[lonely].height
    clients.send(4)
    net.run_until(net.all_at_least(h + 4))
    from consensus.bft.votes import decode_certificate

    later = [decode_certificate(c.cert) for c in net.nodes[rest[0]].commits[h + 1 :]]
    assert any(lonely in cert.signers for cert in later)


def test_a_follower_stays_in_sync_by_requesting_blocks() -> None:
    net = Net(genesis(), [*OPS, OUT], seed=4)
    follower = OUT.public_key
    assert follower not in net.nodes[follower].chain.committee
    sent_by_follower: list[SendFrame] = []
    net.tap = lambda key, act: sent_by_follower.append(act) if key == follower else None
    clients = Clients(net, random.Random(4))
    for _ in range(30):
        clients.send(2)
        net.tick(50)
    members_ = [o.public_key for o in OPS]
    net.run_until(lambda: all(sink_balance(net, k) == clients.sent for k in members_))
    target = max(net.heights(members_))
    net.run_until(lambda: net.nodes[follower].height >= target, max_ms=10_000)
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    node = net.nodes[follower]
    assert node.requests and all(r.to in members_ for r in node.requests)
    assert node.engine.counts.get("blocks_synced", 0) == node.height
    assert sent_by_follower == []  # a follower never speaks on the consensus protocol
    assert node.persisted == []  # nor signs anything


def test_a_transaction_submitted_to_a_follower_is_committed() -> None:
    """A follower admits a client's transaction, answers it, and hands it to the members."""
    net = Net(genesis(), [*OPS, OUT], seed=5)
    t = net.submit(OUT.public_key, transfer(U[0], 0, SINK, amount=9))
    assert net.nodes[OUT.public_key].verdicts[t].accepted
    net.run_until(lambda: all(sink_balance(net, k) == 9 for k in net.nodes))
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()


# -- clients --------------------------------------------------------------------------------


def test_client_tx_verdicts_carry_the_refusal_code() -> None:
    net = Net(genesis(), OPS)
    k = OPS[0].public_key
    good = transfer(U[0], 0, SINK)
    bad_sig = bytearray(transfer(U[1], 0, SINK))
    bad_sig[-5] ^= 1
    cases = {
        "accepted": good,
        "already_pending": good,
        "bad_signature": bytes(bad_sig),
        "fee_too_low": transfer(U[2], 0, SINK, fee=0),
        "malformed": b"\x93junk",
        "bad_nonce": transfer(U[3], 10_000, SINK),
    }
    node = net.nodes[k]
    for code, data in cases.items():
        net.ticket += 1
        ready = node.engine.step(net.now, ClientTx(data, net.ticket))
        verdicts = [a for a in ready.actions if type(a).__name__ == "TxVerdict"]
        assert len(verdicts) == 1, code
        v = verdicts[0]
        assert v.ticket == net.ticket
        assert v.accepted == (code == "accepted"), (code, v)
        assert v.code == code, (code, v)
        assert v.accepted or v.reason


# -- equivocation -----------------------------------------------------------------------------


def inject_equivocation(net: Net, offender, round_: int = 7) -> tuple[bytes, bytes]:
    """Two different prevotes of `offender` at the height everyone works on, each sent to
    every member as if `offender` had sent it."""
    h = net.nodes[OPS[0].public_key].height + 1
    a = vote(offender, h, round_, VoteKind.PREVOTE, b"\x11" * 32)[1]
    b = vote(offender, h, round_, VoteKind.PREVOTE, b"\x22" * 32)[1]
    for k in net.nodes:
        for env in (a, b):
            net.queue.append((k, FrameIn(offender.public_key, encode_frame(TAG_VOTE, env))))
    net.deliver_all()
    return a, b


def committed_equivocations(net: Net, key: bytes) -> list[tuple[int, bytes]]:
    out = []
    for c in net.nodes[key].commits:
        for data in decode_block(c.block).txs:
            tx = decode_tx(data, chain_id=CHAIN_ID, tx_bytes_max=10**6)
            if isinstance(tx.record, Equivocation):
                out.append((c.height, tx.signer))
    return out


def test_an_equivocating_member_is_slashed_and_jailed_on_every_node() -> None:
    net = Net(genesis(), OPS, seed=6)
    net.run_until(net.all_at_least(2))
    assert len(set(net.heights())) == 1
    bad = OPS[1]
    inject_equivocation(net, bad)
    keys = list(net.nodes)
    net.run_until(
        lambda: all(net.nodes[k].chain.state.operators[bad.public_key].slashed_total for k in keys)
    )
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    expected_cut = OPERATOR_STAKE * EQUIVOCATION_SLASH_BPS // BPS
    for k in keys:
        state = net.nodes[k].chain.state
        op = state.operators[bad.public_key]
        assert op.slashed_total == expected_cut
        assert op.pool == OPERATOR_STAKE - expected_cut
        assert state.is_jailed(bad.public_key)
        assert bad.public_key not in state.next_committee()
        state.check_conservation()
        found = committed_equivocations(net, k)
        assert found, "no Equivocation transaction was committed"
    # every node saw the same transactions (agreement), and the offence was paid once
    assert committed_equivocations(net, keys[0]) == committed_equivocations(net, keys[-1])


def test_equivocation_carried_only_by_relays_is_still_caught() -> None:
    """The offender sends one vote to half the committee and the other to the rest: only
    relaying lets some member hold both."""
    net = Net(genesis(), OPS, seed=8)
    net.run_until(net.all_at_least(2))
    bad = OPS[3]
    h = net.nodes[OPS[0].public_key].height + 1
    a = vote(bad, h, 9, VoteKind.PREVOTE, b"\x11" * 32)[1]
    b = vote(bad, h, 9, VoteKind.PREVOTE, b"\x22" * 32)[1]
    honest = [o.public_key for o in OPS if o is not bad]
    net.queue.append((honest[0], FrameIn(bad.public_key, encode_frame(TAG_VOTE, a))))
    for k in honest[1:]:
        net.queue.append((k, FrameIn(bad.public_key, encode_frame(TAG_VOTE, b))))
    net.deliver_all()
    net.run_until(lambda: all(n.chain.state.is_jailed(bad.public_key) for n in net.nodes.values()))
    net.assert_same_head()


# -- restarts -------------------------------------------------------------------------------


def restart(net: Net, key: bytes) -> ConsensusEngine:
    """Crash `key` (its undelivered inputs are lost) and start it again from what it stored:
    a chain snapshot at its head and its persisted statements above the head."""
    node = net.nodes[key]
    net.queue = [(to, inp) for to, inp in net.queue if to != key]
    chain = Chain.from_snapshot(node.chain.snapshot())
    restored = [s for s in node.persisted if s.height > chain.height]
    node.engine = ConsensusEngine(chain, node.identity, net.config, net.now, restored=restored)
    return node.engine


def assert_never_contradicted(node) -> None:
    by_slot: dict[tuple[int, int, int], set[bytes]] = collections.defaultdict(set)
    for s in node.persisted:
        if s.kind in (0, 1, 2):
            by_slot[(s.height, s.round, s.kind)].add(s.data)
    assert all(len(v) == 1 for v in by_slot.values()), {
        k: len(v) for k, v in by_slot.items() if len(v) > 1
    }


def step_until(net: Net, done) -> None:
    """Deliver one queued input at a time (no ticks) until `done()`."""
    while not done():
        assert net.queue, "nothing left to deliver"
        to, inp = net.queue.pop(0)
        net.step(to, inp)


def test_a_member_restarted_mid_height_rejoins_without_contradicting_itself() -> None:
    net = Net(genesis(), OPS, seed=9)
    net.run_until(net.all_at_least(2))
    h = net.nodes[OPS[0].public_key].height + 1
    proposer = net.nodes[OPS[0].public_key].chain.committee.leader_for(h)
    victim = next(o.public_key for o in OPS if o.public_key != proposer)
    node = net.nodes[victim]
    net.submit(proposer, transfer(U[0], 0, SINK))
    # deliver until the victim has prevoted at h, then crash it before it sees more
    step_until(net, lambda: any(s.height == h and s.kind == 1 for s in node.persisted))
    assert node.height == h - 1
    restart(net, victim)
    net.run_until(net.all_at_least(h + 3))
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    assert_never_contradicted(node)


def test_a_proposer_restarted_right_after_proposing_rejoins() -> None:
    net = Net(genesis(), OPS, seed=10)
    net.run_until(net.all_at_least(2))
    h = net.nodes[OPS[0].public_key].height + 1
    proposer = net.nodes[OPS[0].public_key].chain.committee.leader_for(h)
    node = net.nodes[proposer]
    net.submit(proposer, transfer(U[0], 0, SINK))
    assert any(s.height == h and s.kind == 0 for s in node.persisted)  # it proposed at once
    restart(net, proposer)
    net.run_until(net.all_at_least(h + 3))
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    assert_never_contradicted(node)
    assert sink_balance(net, proposer) == 1


def test_many_restarts_under_loss_never_fork_nor_contradict() -> None:
    net = Net(genesis(), OPS, seed=11, shuffle=True, drop=0.05)
    rng = random.Random(11)
    clients = Clients(net, rng)
    for i in range(60):
        clients.send(1)
        net.tick(50)
        if i % 10 == 5:
            restart(net, rng.choice(list(net.nodes)))
    net.run_until(
        lambda: all(sink_balance(net, k) == clients.sent for k in net.nodes), max_ms=60_000
    )
    for node in net.nodes.values():
        assert_never_contradicted(node)


# -- sync details ---------------------------------------------------------------------------


def test_a_lagging_member_is_pushed_blocks_when_it_speaks_about_an_old_height() -> None:
    net = Net(genesis(), OPS, seed=12)
    lonely = OPS[0].public_key
    rest = [k for k in net.nodes if k != lonely]
    net.isolated.add(lonely)
    net.run_until(net.all_at_least(3, rest))
    pushes: list[tuple[bytes, bytes]] = []
    net.tap = lambda key, act: (
        pushes.append((key, act.to)) if decode_frame(act.frame)[0] == TAG_BLOCKS else None
    )
    net.isolated.clear()
    # only votes may reach the laggard: no sync replies (RequestSync goes unanswered)
    net.sync_reply_enabled = False
    net.run_until(lambda: net.nodes[lonely].height >= min(net.heights(rest)), max_ms=10_000)
    assert any(to == lonely for _, to in pushes)


def test_a_sync_reply_with_a_bad_certificate_is_refused() -> None:
    net = Net(genesis(), OPS, seed=13)
    net.run_until(net.all_at_least(3))
    g = genesis()
    fresh = ConsensusEngine(Chain.from_genesis(g), OUT, net.config, net.now)
    src = net.nodes[OPS[0].public_key]
    from consensus.bft.messages import BlockBatch, CommittedBlock
    from consensus.engine import SyncReply

    good = [CommittedBlock(c.block, c.cert) for c in src.commits[:3]]
    # block 2 travels with block 1's certificate
    bad = [good[0], CommittedBlock(good[1].block, good[0].cert), good[2]]
    fresh.step(net.now, SyncReply(OPS[0].public_key, BlockBatch(tuple(bad), 3).encode()))
    assert fresh.chain.height == 1
    assert fresh.counts.get("sync_blocks_refused") == 1
    fresh.step(net.now + 1, SyncReply(OPS[0].public_key, BlockBatch(tuple(good), 3).encode()))
    assert fresh.chain.height == 3 and fresh.chain.head_hash == src.commits[2].block_hash
    fresh.step(net.now + 2, SyncReply(OPS[0].public_key, b"\x00garbage"))
    assert fresh.chain.height == 3


def test_frames_that_do_not_decode_are_counted_and_ignored() -> None:
    net = Net(genesis(), OPS)
    e = net.nodes[OPS[0].public_key].engine
    for frame in (b"", b"\x92\x09\xc4\x00", encode_frame(TAG_VOTE, b"not an envelope")):
        e.step(0, FrameIn(OPS[1].public_key, frame))
    assert e.counts["frames_refused"] == 3


def test_a_proposal_whose_block_does_not_match_its_hash_is_ignored() -> None:
    from consensus.bft.messages import encode_proposal_frame
    from tests.consensus.conftest import next_block, proposal

    net = Net(genesis(), OPS)
    target = net.nodes[OPS[0].public_key]
    leader = target.chain.committee.leader_for(1)
    lid = next(o for o in OPS if o.public_key == leader)
    block = next_block(target.chain, proposer=leader, time_ms=5)
    other = next_block(target.chain, proposer=leader, time_ms=6)
    _, env = proposal(lid, 1, 0, block.block_hash())
    target.engine.step(1, FrameIn(leader, encode_proposal_frame(env, other.encode())))
    assert target.engine.counts.get("proposal_hash_mismatch") == 1


# -- the agreement property ------------------------------------------------------------------


@settings(
    max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 2**32 - 1), drop=st.sampled_from([0.0, 0.1, 0.25]), isolate=st.booleans()
)
def test_no_two_nodes_ever_commit_different_blocks_at_one_height(seed, drop, isolate) -> None:
    net = Net(genesis(), [*OPS, OUT], seed=seed, shuffle=True, drop=drop)
    rng = random.Random(seed)
    clients = Clients(net, rng)
    victim = rng.choice(OPS).public_key
    for i in range(50):
        if rng.random() < 0.5:
            clients.send(1)
        if isolate and i == 10:
            net.isolated.add(victim)
        if isolate and i == 30:
            net.isolated.discard(victim)
        net.tick(rng.choice([20, 50, 100]))  # AgreementViolation is raised on any fork
    committed: dict[int, set[bytes]] = collections.defaultdict(set)
    for node in net.nodes.values():
        for c in node.commits:
            committed[c.height].add(c.block_hash)
    assert all(len(hashes) == 1 for hashes in committed.values())
    assert max(net.heights()) >= 2  # something was decided: agreement is not vacuous


# -- a wiped disk -----------------------------------------------------------------------------


def wipe(net: Net, key: bytes) -> ConsensusEngine:
    """The node loses its whole store: it starts again from genesis and knows it forgot its
    votes. (The harness keeps the old `persisted` list, to check for contradictions.)"""
    node = net.nodes[key]
    net.queue = [(to, inp) for to, inp in net.queue if to != key]
    node.commits = []
    node.engine = ConsensusEngine(
        Chain.from_genesis(net.genesis), node.identity, net.config, net.now, forgot_votes=True
    )
    return node.engine


@pytest.mark.parametrize("seed", [0, 3])
def test_a_member_with_a_wiped_disk_rejoins_without_contradicting_itself(seed: int) -> None:
    net = Net(genesis(), OPS, seed=seed, shuffle=True, drop=0.05)
    clients = Clients(net, random.Random(seed))
    for _ in range(20):
        clients.send(1)
        net.tick(50)
    node = net.nodes[OPS[seed % 4].public_key]
    before = len(node.persisted)
    assert before > 0
    wipe(net, node.key)
    for _ in range(40):
        clients.send(1)
        net.tick(50)
    net.run_until(
        lambda: all(sink_balance(net, k) == clients.sent for k in net.nodes), max_ms=60_000
    )
    assert_never_contradicted(node)
    assert len(node.persisted) > before  # it votes again
    assert any(name == "voting_resumes" for name, _ in node.events)


def test_a_wiped_member_does_not_resume_on_one_peers_empty_reply() -> None:
    from consensus.bft.messages import BlockBatch
    from consensus.engine import SyncReply

    net = Net(genesis(), OPS, seed=2)
    committee = net.nodes[OPS[0].public_key].chain.committee
    first, second = committee.leader_for(1), committee.leader_for(2)
    net.isolated.add(first)  # height 1 needs round 1, proposed by `second`
    net.run_until(net.all_at_least(1, [k for k in net.nodes if k != first]))
    net.isolated.clear()
    net.run_until(net.all_at_least(4))
    node = net.nodes[second]
    assert any(s.height == 1 and s.round == 1 and s.kind == 0 for s in node.persisted)
    wipe(net, second)
    # one peer (Byzantine, or just lagging) answers with nothing and head 0
    net.step(second, SyncReply(first, BlockBatch((), 0).encode()))
    assert_never_contradicted(node)


# -- statements of strangers ------------------------------------------------------------------


def test_a_strangers_conflicting_votes_do_not_make_members_submit_evidence() -> None:
    net = Net(genesis(), OPS, seed=14)
    net.run_until(net.all_at_least(2))
    node = net.nodes[OPS[0].public_key]
    stranger = members(1, "stranger")[0]
    h = node.height + 1
    for block_hash in (b"\x11" * 32, b"\x22" * 32):
        env = vote(stranger, h, 0, VoteKind.PREVOTE, block_hash)[1]
        node.engine.step(net.now, FrameIn(OPS[1].public_key, encode_frame(TAG_VOTE, env)))
    assert len(node.engine.mempool) == 0
    assert node.engine.counts.get("equivocations_reported", 0) == 0


def test_relayed_statements_for_far_heights_are_not_all_remembered() -> None:
    from consensus.bft.messages import Relay
    from consensus.engine import SLOT_HEIGHTS_KEPT

    net = Net(genesis(), OPS, seed=15)
    engine = net.nodes[OPS[2].public_key].engine
    stranger = members(1, "stranger")[0]
    envs = tuple(vote(stranger, 10**6 + i, 0, VoteKind.PREVOTE, b"")[1] for i in range(500))
    engine.step(net.now, FrameIn(OPS[1].public_key, encode_frame(TAG_RELAY, Relay(envs).encode())))
    kept = sum(len(v) for v in engine._slots.values())  # internal: nothing else shows it
    assert kept <= 4 * SLOT_HEIGHTS_KEPT * 3, f"{kept} statements of a stranger kept"


# -- committees that change -------------------------------------------------------------------

SIX = members(6, "net-epoch")


def test_engines_follow_committee_turnover_at_epoch_boundaries() -> None:
    params = make_params(committee_size=4, epoch_blocks=3)
    stakes = [1_000_000, 2_000_000, 3_000_000, 1_500_000, 2_500_000, 1_200_000]
    net = Net(make_genesis(SIX, U, params=params, stakes=stakes), SIX, seed=16)
    seen: list[tuple[int, tuple[bytes, ...]]] = []

    def watch() -> bool:
        for node in net.nodes.values():
            c = node.chain
            assert c.committee.size == 4
            if c.height % 3 == 0:
                assert c.committee == c.state.next_committee()
        head = net.nodes[SIX[0].public_key].chain
        if not seen or seen[-1][1] != head.committee.members:
            seen.append((head.height, head.committee.members))
        return min(net.heights()) >= 15

    net.run_until(watch, max_ms=60_000)
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    # certificates were always made by the committee of their epoch, and the committee
    # changed only at epoch boundaries: replay every commit and note each change's height
    # (sampling the head while the net runs can see a change only blocks after it happened)
    replay = Chain.from_genesis(net.genesis)
    changes = [(0, replay.committee.members)]
    for c in net.nodes[SIX[0].public_key].commits:
        replay.apply(replay.check_commit(c.block, c.cert))
        if replay.committee.members != changes[-1][1]:
            changes.append((replay.height, replay.committee.members))
    assert len({m for _, m in changes}) >= 2, "the committee never changed"
    assert all(h % 3 == 0 for h, _ in changes[1:]), "a committee changed inside an epoch"
    assert {m for _, m in seen} <= {m for _, m in changes}


def test_a_jailed_offender_leaves_the_committee_at_the_epoch_boundary() -> None:
    params = make_params(committee_size=4, epoch_blocks=4)
    net = Net(make_genesis(OPS, U, params=params), OPS, seed=17)
    net.run_until(net.all_at_least(1))
    bad = OPS[0]
    inject_equivocation(net, bad)
    net.run_until(lambda: all(n.chain.state.is_jailed(bad.public_key) for n in net.nodes.values()))
    net.run_until(net.all_at_least(9))
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    for node in net.nodes.values():
        assert bad.public_key not in node.chain.committee
        assert node.chain.committee.size == 3


# -- a Byzantine member -----------------------------------------------------------------------


class Equivocator:
    """Rewrites what one member sends: each vote and proposal goes out honest to some members
    and conflicting to others (another block, nil, a block of its own making)."""

    def __init__(self, net: Net, ident, rng: random.Random, rate: float) -> None:
        self.net, self.ident, self.rng, self.rate = net, ident, rng, rate
        self.blocks: dict[tuple[int, int], list[bytes]] = collections.defaultdict(list)
        self.rewritten = 0

    def __call__(self, key: bytes, act: SendFrame) -> bytes | None:
        from consensus.bft.block import Block
        from consensus.bft.messages import (
            TAG_PROPOSAL,
            encode_proposal_frame,
            split_proposal_payload,
        )
        from consensus.bft.votes import Proposal, Vote
        from p2p.wire import sign

        tag, payload = decode_frame(act.frame)
        if tag == TAG_PROPOSAL:  # remember every block proposed, whoever proposed it
            env, block, pol = split_proposal_payload(payload)
            rec = decode_statement(env, CHAIN_ID).record
            seen = self.blocks[(rec.height, rec.round)]
            if rec.block_hash not in seen:
                seen.append(rec.block_hash)
        if key != self.ident.public_key or self.rng.random() >= self.rate:
            return act.frame
        self.rewritten += 1
        if tag == TAG_VOTE:
            rec = decode_statement(payload, CHAIN_ID).record
            options = [
                h for h in [b"", *self.blocks[(rec.height, rec.round)]] if h != rec.block_hash
            ]
            other = self.rng.choice(options) if options else b""
            forged = sign(Vote(rec.height, rec.round, rec.kind, other), self.ident, CHAIN_ID)
            return encode_frame(TAG_VOTE, forged.encode())
        if tag == TAG_PROPOSAL:
            env, block, pol = split_proposal_payload(payload)
            rec = decode_statement(env, CHAIN_ID).record
            b = Block.decode(block, max_bytes=len(block))
            alt = dataclasses.replace(b, time_ms=b.time_ms + 1 + self.rng.randrange(5))
            p = Proposal(rec.height, rec.round, rec.pol_round_plus_one, alt.block_hash())
            forged = sign(p, self.ident, CHAIN_ID)
            return encode_proposal_frame(forged.encode(), alt.encode(), pol)
        return act.frame


@settings(
    max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.3, 0.6, 1.0]),
    drop=st.sampled_from([0.0, 0.1]),
)
def test_one_byzantine_member_of_four_cannot_fork_the_honest_ones(seed, rate, drop) -> None:
    net = Net(genesis(), OPS, seed=seed, shuffle=True, drop=drop)
    rng = random.Random(seed)
    bad = rng.choice(OPS)
    eq = Equivocator(net, bad, random.Random(seed + 1), rate)
    net.mutate = eq
    clients = Clients(net, rng)
    honest = [o.public_key for o in OPS if o is not bad]
    for _ in range(60):
        if rng.random() < 0.5:
            clients.send(1, via=honest)
        net.tick(rng.choice([20, 50, 100]))  # AgreementViolation is raised on any fork
    assert eq.rewritten > 0
    assert max(net.heights(honest)) >= 2  # liveness with f = 1 Byzantine: honest quorum of 3


def test_a_wiped_member_that_was_a_round_ahead_is_not_slashed() -> None:
    from consensus.engine import EngineTick, SyncReply

    net = Net(genesis(), OPS, seed=21)
    net.run_until(net.all_at_least(2))
    net.run_until(lambda: len(set(net.heights())) == 1)
    # lossy links: relays never arrive (safety must not depend on them)
    net.mutate = lambda key, act: None if decode_frame(act.frame)[0] == TAG_RELAY else act.frame
    committee = net.nodes[OPS[0].public_key].chain.committee
    h = net.nodes[OPS[0].public_key].height + 1
    w = committee.leader_for(h + 1)  # proposes in round 1 of height h
    assert w != committee.leader_for(h)
    node = net.nodes[w]
    t0 = net.now
    net.now = t0 + 5_000  # w's timers run ahead: round 0 times out, it proposes in round 1
    net.step(w, EngineTick())
    assert any(s.height == h and s.round == 1 and s.kind == 0 for s in node.persisted)
    sent, net.queue = net.queue, []
    net.now = t0 + 1
    for to, inp in sent:  # the others receive w's round-1 statements while still in round 0
        net.step(to, inp)
    assert all(net.nodes[k].engine.machine.round == 0 for k in net.nodes if k != w)
    wipe(net, w)
    honest = next(k for k in net.nodes if k != w)  # an honest, up-to-date peer
    net.step(w, SyncReply(honest, net.sync_reply(honest, 1, h - 1)))
    net.deliver_all()
    net.run_for(2_000)
    assert all(not n.chain.state.operators[w].slashed_total for n in net.nodes.values())
    assert_never_contradicted(node)


def test_a_restarted_member_sends_no_vote_it_did_not_persist() -> None:
    """What the constructor decides (a restart with persisted statements acts at once) must
    come out of the first step, Persist included, before the vote is ever sent."""
    net = Net(genesis(), OPS, seed=9)
    net.run_until(net.all_at_least(2))
    h = net.nodes[OPS[0].public_key].height + 1
    proposer = net.nodes[OPS[0].public_key].chain.committee.leader_for(h)
    node = net.nodes[proposer]
    net.submit(proposer, transfer(U[0], 0, SINK))
    # it crashes after its proposal reached the disk, before its prevote did
    node.persisted = [s for s in node.persisted if not (s.height == h and s.kind != 0)]
    sent: list[bytes] = []

    def tap(key: bytes, act: SendFrame) -> None:
        tag, payload = decode_frame(act.frame)
        if key == proposer and tag == TAG_VOTE:
            sent.append(payload)

    restart(net, proposer)
    net.tap = tap
    net.run_until(net.all_at_least(h + 1))
    persisted = {s.data for s in node.persisted if s.kind in (1, 2)}
    unpersisted = {decode_statement(v, CHAIN_ID).record for v in sent if v not in persisted}
    assert unpersisted == set()


class BatchingNet(Net):
    """Frames queued for one member go out as one batch frame, as the runtime's per-peer
    senders do under load."""

    def deliver_all(self, limit: int = 200_000) -> None:
        merged: dict[tuple[bytes, bytes], list[bytes]] = {}
        rest: list[tuple[bytes, EngineInput]] = []
        for to, inp in self.queue:
            if isinstance(inp, FrameIn):
                merged.setdefault((to, inp.sender), []).append(inp.data)
            else:
                rest.append((to, inp))
        self.queue = rest + [
            (to, FrameIn(sender, frames[0] if len(frames) == 1 else encode_batch(frames)))
            for (to, sender), frames in merged.items()
        ]
        self.batches = getattr(self, "batches", 0) + sum(len(f) > 1 for f in merged.values())
        super().deliver_all(limit)


def test_batched_frames_commit_the_same_as_single_ones() -> None:
    net = BatchingNet(genesis(), OPS, seed=1)
    clients = Clients(net, random.Random(1))
    for _ in range(20):
        clients.send(3)
        net.tick(50)
    keys = list(net.nodes)
    net.run_until(lambda: all(sink_balance(net, k) == clients.sent for k in keys))
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    assert net.batches > 0
    # a batch inside a batch is ignored, and garbage inside a batch is refused frame by frame
    node = net.nodes[keys[0]]
    before = node.engine.counts.get("frames_refused", 0)
    node.engine.step(net.now, FrameIn(keys[1], encode_batch([encode_batch([b"x"]), b"junk"])))
    assert node.engine.counts.get("frames_refused", 0) == before + 1
