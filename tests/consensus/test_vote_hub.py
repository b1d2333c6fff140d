"""Vote routing through the round's proposer (consensus.vote_hub) and client transactions
forwarded to the next proposers only: a committee of 10 commits exactly what it commits
all-to-all, with far fewer frames; a silent hub costs rounds, never agreement; conflicting
votes sent around the hub still meet and get their signer slashed."""

from __future__ import annotations

import random

import pytest

from consensus.bft.messages import TAG_TXS, TAG_VOTE, decode_frame, encode_frame
from consensus.bft.votes import NIL, Vote, VoteKind
from consensus.committee import Committee
from consensus.engine import FrameIn, SendFrame
from consensus.engine_types import EngineConfig
from consensus.vote_hub import NEVER_MS, VoteHub
from tests.consensus.conftest import (
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


def test_client_transactions_go_to_the_next_proposers_only() -> None:
    net = Net(genesis(), OPS, config=fast_config(vote_hub_from=8, tx_forward_leaders=3), seed=3)
    net.run_until(net.all_at_least(2))
    forwards: list[tuple[bytes, bytes]] = []

    def tap(sender: bytes, act: SendFrame) -> None:
        if decode_frame(act.frame)[0] == TAG_TXS:
            forwards.append((sender, act.to))

    net.tap = tap
    entry = OPS[0].public_key
    net.submit(entry, transfer(U[0], 0, SINK))
    net.run_until(lambda: all(n.chain.state.balance(SINK) == 1 for n in net.nodes.values()))
    assert 1 <= len(forwards) <= 3
    assert all(sender == entry and to != entry for sender, to in forwards)


def test_the_hub_relays_a_slot_at_its_quorum_and_late_votes_with_the_next_batch() -> None:
    ids = members(4, "hub-unit")
    committee = Committee(tuple(i.public_key for i in ids), (1, 1, 1, 1), 4)
    hub = VoteHub(committee, 5, committee.leader_for(5), flush_ms=200)
    me = hub.me
    assert hub.is_hub_for(Vote(5, 0, VoteKind.PREVOTE, b"\x01" * 32))
    assert hub.route(Vote(5, 0, VoteKind.PREVOTE, NIL)) is None  # nil: to every member
    assert hub.route(Vote(5, 1, VoteKind.PREVOTE, b"\x01" * 32)) == committee.leader_for(6)
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


@pytest.mark.parametrize(
    ("field", "value"), [("vote_hub_from", 1), ("hub_flush_ms", 0), ("tx_forward_leaders", -1)]
)
def test_routing_settings_out_of_range_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})  # type: ignore[arg-type]
