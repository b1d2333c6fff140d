"""Vote routing through the round's proposer (consensus.vote_hub) and client transactions
forwarded to the next proposers only: a committee of 10 commits exactly what it commits
all-to-all, with far fewer frames; a silent hub costs rounds, never agreement; conflicting
votes sent around the hub still meet and get their signer slashed."""

from __future__ import annotations

import collections
import random
from dataclasses import replace

import pytest

from consensus.bft.block import decode_block
from consensus.bft.messages import (
    TAG_PROPOSAL,
    TAG_RELAY,
    TAG_TXS,
    TAG_VOTE,
    TxBatch,
    decode_frame,
    encode_frame,
    encode_proposal_frame,
    split_proposal_payload,
)
from consensus.bft.tendermint import BftConfig
from consensus.bft.votes import NIL, Vote, VoteKind, decode_statement
from consensus.committee import Committee
from consensus.engine import FrameIn, SendFrame
from consensus.engine_types import EngineConfig
from consensus.vote_hub import NEVER_MS, VoteHub
from p2p.wire import sign
from tests.consensus.conftest import (
    CHAIN_ID,
    Net,
    fast_config,
    make_genesis,
    make_params,
    members,
    transfer,
    users,
    vote,
)

OPS = members(10, "hub")
U = users(6)
SINK = members(1, "hub-sink")[0].public_key


def genesis():
    return make_genesis(OPS, U, params=make_params(committee_size=10))


def run_transfers(config: EngineConfig, seed: int = 5) -> tuple[Net, int]:
    net = Net(genesis(), OPS, config=config, seed=seed)
    rng, nonces, sent = random.Random(seed), [0] * len(U), 0
    for _ in range(30):
        for _ in range(3):
            u = rng.randrange(len(U))
            net.submit(rng.choice(OPS).public_key, transfer(U[u], nonces[u], SINK))
            nonces[u] += 1
            sent += 1
        net.tick(50)
    keys = list(net.nodes)
    net.run_until(lambda: all(net.nodes[k].chain.state.balance(SINK) == sent for k in keys))
    net.run_until(lambda: len(set(net.heights())) == 1)
    net.assert_same_head()
    return net, sent


def test_a_hub_routed_committee_commits_everything_with_far_fewer_frames() -> None:
    hub_net, sent = run_transfers(fast_config(vote_hub_from=8))
    flat_net, sent_flat = run_transfers(fast_config(vote_hub_from=1_000, tx_forward_leaders=0))
    assert sent == sent_flat
    for net in (hub_net, flat_net):
        for node in net.nodes.values():
            assert sum(c.txs for c in node.commits) == sent
            assert all(v.accepted for v in node.verdicts.values())
    per_height_hub = hub_net.frames_sent / min(hub_net.heights())
    per_height_flat = flat_net.frames_sent / min(flat_net.heights())
    # all-to-all: about 2 n^2 = 200 vote frames a height; through the hub about 5n
    assert per_height_hub < per_height_flat / 3, (per_height_hub, per_height_flat)


def test_block_votes_go_to_the_hub_and_come_back_relayed() -> None:
    net = Net(genesis(), OPS, config=fast_config(vote_hub_from=8), seed=2)
    net.run_until(net.all_at_least(2))
    seen: list[tuple[bytes, bytes, int]] = []
    net.tap = lambda sender, act: seen.append((sender, act.to, decode_frame(act.frame)[0]))
    h = net.nodes[OPS[0].public_key].height
    net.run_until(net.all_at_least(h + 3))
    committee = net.nodes[OPS[0].public_key].chain.committee
    direct_votes = [(s, to) for s, to, tag in seen if tag == TAG_VOTE]
    assert direct_votes
    # a block vote travels only to a proposer of the height it belongs to
    proposers = {committee.leader_for(x) for x in range(h + 1, h + 5)}
    assert {to for _, to in direct_votes} <= proposers
    # ...which relays the votes to every member
    relays = [(s, to) for s, to, tag in seen if tag == TAG_RELAY]
    everyone = {o.public_key for o in OPS}
    hubs = {s for s, _ in relays} & proposers
    # (members also send the next proposer their witness: a relay to one member)
    assert any({to for s, to in relays if s == hub} == everyone - {hub} for hub in hubs)


def test_a_silent_hub_costs_rounds_not_agreement() -> None:
    net = Net(genesis(), OPS, config=fast_config(vote_hub_from=8), seed=4)
    net.run_until(net.all_at_least(2))
    h = net.nodes[OPS[0].public_key].height
    committee = net.nodes[OPS[0].public_key].chain.committee
    net.isolated.add(committee.leader_for(h + 1))  # the next height's proposer and hub
    net.run_until(
        lambda: min(n.height for k, n in net.nodes.items() if k not in net.isolated) >= h + 4,
        max_ms=60_000,
    )
    net.isolated.clear()
    net.run_until(lambda: len(set(net.heights())) == 1, max_ms=60_000)
    net.assert_same_head()


def test_conflicting_votes_sent_around_the_hub_get_their_signer_slashed() -> None:
    """The offender sends one vote to one member and another to the rest, none to the hub:
    the member forwards its copy to the hub, which relays both."""
    net = Net(genesis(), OPS, config=fast_config(vote_hub_from=8), seed=9)
    net.run_until(net.all_at_least(2))
    h = net.nodes[OPS[0].public_key].height + 1
    committee = net.nodes[OPS[0].public_key].chain.committee
    round_ = 9
    hub = committee.leader_for(h + round_)
    bad = next(o for o in OPS if o.public_key != hub)
    others = [o.public_key for o in OPS if o.public_key not in (hub, bad.public_key)]
    a = vote(bad, h, round_, VoteKind.PREVOTE, b"\x11" * 32)[1]
    b = vote(bad, h, round_, VoteKind.PREVOTE, b"\x22" * 32)[1]
    net.queue.append((others[0], FrameIn(bad.public_key, encode_frame(TAG_VOTE, a))))
    for k in others[1:]:
        net.queue.append((k, FrameIn(bad.public_key, encode_frame(TAG_VOTE, b))))
    net.deliver_all()
    net.run_until(lambda: all(n.chain.state.is_jailed(bad.public_key) for n in net.nodes.values()))
    net.assert_same_head()


def test_a_proposer_that_sends_one_member_another_block_is_slashed() -> None:
    """The proposer is the hub, so its two proposals never meet there: each member sends
    the next proposer what it held as the height ends (the witness)."""
    bft = BftConfig(timeout_propose_ms=600, timeout_propose_delta_ms=200, timeout_vote_ms=300,
                    timeout_vote_delta_ms=100, rebroadcast_ms=1_000)  # fmt: skip
    net = Net(genesis(), OPS, config=fast_config(vote_hub_from=8, bft=bft), seed=1)
    net.run_until(net.all_at_least(2))
    ids = {o.public_key: o for o in OPS}
    h = net.nodes[OPS[0].public_key].height + 1
    leader = net.nodes[OPS[0].public_key].chain.committee.leader_for(h)
    victim = next(o.public_key for o in OPS if o.public_key != leader)
    twins = []

    def mutate(sender: bytes, act: SendFrame) -> bytes:
        if sender != leader or act.to != victim or twins:
            return act.frame
        tag, payload = decode_frame(act.frame)
        if tag != TAG_PROPOSAL:
            return act.frame
        env, block_bytes, _ = split_proposal_payload(payload)
        prop = decode_statement(env, CHAIN_ID).record
        if prop.height != h or prop.round != 0:
            return act.frame
        twin_block = replace(decode_block(block_bytes), time_ms=prop.height + 10**9, txs=())
        twin = replace(prop, block_hash=twin_block.block_hash())
        twins.append(twin)
        return encode_proposal_frame(
            sign(twin, ids[leader], CHAIN_ID).encode(), twin_block.encode()
        )

    net.mutate = mutate
    net.run_until(lambda: all(n.chain.state.is_jailed(leader) for n in net.nodes.values()))
    assert twins
    net.assert_same_head()


def test_a_cut_off_member_with_a_backlog_catches_up_and_forwards_each_tx_once() -> None:
    """Many blocks synced in one step must not multiply the client backlog it re-forwards."""
    ops = members(4, "rf")
    net = Net(make_genesis(ops, U, params=make_params(committee_size=4)), ops,
              config=fast_config(empty_block_ms=20), seed=1)  # fmt: skip
    net.run_until(net.all_at_least(2))
    lag = ops[3].public_key
    net.isolated.add(lag)
    for n in range(100):
        net.submit(lag, transfer(U[n % 2], n // 2, SINK))
    others = [o.public_key for o in ops[:3]]
    net.run_until(lambda: min(net.heights(others)) >= 150, max_ms=120_000, step_ms=20)
    sent: collections.Counter[tuple[int, bytes, bytes]] = collections.Counter()

    def tap(sender: bytes, act: SendFrame) -> None:
        tag, payload = decode_frame(act.frame)
        if sender == lag and tag == TAG_TXS:
            for tx in TxBatch.decode(payload, max_bytes=len(payload)).txs:
                sent[(net.now, act.to, tx)] += 1

    net.tap = tap
    net.isolated.clear()
    net.run_until(lambda: all(n.chain.state.balance(SINK) == 100 for n in net.nodes.values()),
                  max_ms=60_000, step_ms=20)  # fmt: skip
    net.assert_same_head()
    # the backlog went out, and no forwarding tick carried a transaction to a member twice
    assert sent and max(sent.values()) == 1
    assert len({tx for _, _, tx in sent}) <= 100


def test_client_transactions_go_to_the_next_proposers_only() -> None:
    net = Net(genesis(), OPS, config=fast_config(vote_hub_from=8, tx_forward_leaders=3), seed=3)
    net.run_until(net.all_at_least(2))
    forwards: list[tuple[bytes, bytes]] = []
    outside: list[bytes] = []

    def tap(sender: bytes, act: SendFrame) -> None:
        if decode_frame(act.frame)[0] == TAG_TXS:
            forwards.append((sender, act.to))
            engine = net.nodes[sender].engine  # its state when it chose the targets
            view = engine.chain.height + 1 + (engine.machine.round if engine.machine else 0)
            committee, near = engine.chain.committee, {engine.chain.committee.leader_for(view)}
            for i in range(1, 10):  # the first 3 other than the sender after the current view
                if len(near - {committee.leader_for(view)}) < 3:
                    near |= {committee.leader_for(view + i)} - {sender}
            if act.to not in near:
                outside.append(act.to)

    net.tap = tap
    entry = OPS[0].public_key
    net.submit(entry, transfer(U[0], 0, SINK))
    net.run_until(lambda: all(n.chain.state.balance(SINK) == 1 for n in net.nodes.values()))
    # the next 3 proposers, and the current one while the entry still waits for its proposal
    assert 1 <= len(forwards) <= 4
    assert all(sender == entry and to != entry for sender, to in forwards)
    assert outside == []


def test_the_hub_relays_a_slot_at_its_quorum_and_late_votes_with_the_next_batch() -> None:
    ids = members(4, "hub-unit")
    committee = Committee(tuple(i.public_key for i in ids), (1, 1, 1, 1), 4)
    hub = VoteHub(committee, 5, committee.leader_for(5), flush_ms=200)
    me = hub.me
    assert hub.is_hub_for(Vote(5, 0, VoteKind.PREVOTE, b"\x01" * 32))
    assert hub.route(Vote(5, 0, VoteKind.PREVOTE, NIL), slow=False) is None  # nil: to all
    assert hub.route(Vote(5, 0, VoteKind.PREVOTE, b"\x01" * 32), slow=False) == hub.me
    assert hub.hub_of(1) == committee.leader_for(6)
    # later rounds and slow heights go to every member: a hub may be what went wrong
    assert hub.route(Vote(5, 1, VoteKind.PREVOTE, b"\x01" * 32), slow=False) is None
    assert hub.route(Vote(5, 0, VoteKind.PREVOTE, b"\x01" * 32), slow=True) is None
    voters = [me] + [i.public_key for i in ids if i.public_key != me]
    block = b"\x01" * 32
    v = Vote(5, 0, VoteKind.PREVOTE, block)
    assert not hub.collect(b"a", voters[0], v, 1_000)
    assert hub.flush_at_ms == 1_200
    assert not hub.collect(b"b", voters[1], v, 1_010)
    assert hub.collect(b"c", voters[2], v, 1_020)  # 3 of 4: the quorum
    assert hub.take() == [b"a", b"b", b"c"] and hub.flush_at_ms == NEVER_MS
    assert not hub.collect(b"d", voters[3], v, 1_030)  # late: rides with the next batch
    assert hub.flush_at_ms == NEVER_MS
    w = Vote(5, 0, VoteKind.PRECOMMIT, block)
    assert not hub.collect(b"e", voters[0], w, 1_040)
    assert hub.flush_at_ms == 1_240
    assert not hub.collect(b"f", voters[1], w, 1_050)
    assert hub.collect(b"g", voters[2], w, 1_060)
    assert hub.take() == [b"d", b"e", b"f", b"g"]


def test_votes_for_a_junk_block_do_not_trigger_the_hubs_batch() -> None:
    ids = members(10, "hub-junk")
    committee = Committee(tuple(i.public_key for i in ids), (1,) * 10, 10)
    hub = VoteHub(committee, 5, committee.leader_for(5), flush_ms=200)
    voters = [i.public_key for i in ids]
    junk, block = (
        Vote(5, 0, VoteKind.PREVOTE, b"\x0f" * 32),
        Vote(5, 0, VoteKind.PREVOTE, b"\x01" * 32),
    )
    for k in range(3):  # three Byzantine members vote for a hash nobody proposed
        assert not hub.collect(b"j%d" % k, voters[k], junk, 1_000)
    for k in range(3, 9):
        assert not hub.collect(b"b%d" % k, voters[k], block, 1_000)
    assert hub.collect(b"b9", voters[9], block, 1_000)  # 7 of 10 for one block: the quorum
    assert not hub.collect(b"j0x", voters[0], replace(junk, block_hash=b"\x0e" * 32), 1_001)
    assert not hub.collect(b"j0y", voters[0], replace(junk, block_hash=b"\x0d" * 32), 1_002)
    assert b"j0y" not in hub.take()  # a third version of one slot is not held


@pytest.mark.parametrize(
    ("field", "value"), [("vote_hub_from", 1), ("hub_flush_ms", 0), ("tx_forward_leaders", -1)]
)
def test_routing_settings_out_of_range_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})  # type: ignore[arg-type]


def test_heights_that_are_all_slow_alike_keep_their_votes_on_the_hub() -> None:
    """When every height takes longer than the rebroadcast interval (here an idle proposer
    waits 500 ms for an empty block, with re-sends every 300 ms; live, members that share an
    overloaded host), "slow" is judged against the last height: votes still go through the
    hub, about 2n vote frames a height rather than 2n(n - 1), and the chain goes on."""
    config = fast_config(vote_hub_from=8, empty_block_ms=500)
    assert config.empty_block_ms > config.bft.rebroadcast_ms
    net = Net(genesis(), OPS, config=config, seed=6)
    net.run_until(net.all_at_least(3))
    votes: list[bytes] = []

    def tap(sender: bytes, act: SendFrame) -> None:
        if decode_frame(act.frame)[0] == TAG_VOTE:
            votes.append(sender)

    net.tap = tap
    h = min(net.heights())
    net.run_until(net.all_at_least(h + 6))
    heights = min(net.heights()) - h
    n = len(OPS)
    assert len(votes) / heights < 3 * n, (len(votes), heights)
    net.assert_same_head()
