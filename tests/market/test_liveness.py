"""Uptime measured by the ledger: heartbeats, up and down blocks, per-epoch history, rewards
weighted by uptime and by delivered work, and down nodes rerouted at once."""

from __future__ import annotations

from consensus.ledger import LedgerParams, TxCode, decode_state
from consensus.ledger.job_records import JobStatus
from consensus.ledger.market_records import Heartbeat
from consensus.ledger.params import MarketParams
from tests.market.test_job_lifecycle import FEE, NODES, OUTSIDER, Market, offered_market

LIVE = MarketParams(
    commit_window_blocks=8,
    reveal_window_blocks=4,
    heartbeat_blocks=2,
    down_after_blocks=3,
    work_reward_bps=5_000,
    spot_check_permille=0,
)
EPOCH = 20
PARAMS = LedgerParams(epoch_blocks=EPOCH, min_stake=1_000, min_fee=FEE, market=LIVE)


def beat(m: Market, *silent: int) -> None:
    """Every node but `silent` sends a heartbeat in the next block."""
    for i, node in enumerate(NODES):
        if i not in silent:
            m.send(node, Heartbeat)


def test_a_heartbeat_needs_an_offer() -> None:
    m = Market(PARAMS)
    m.send(OUTSIDER, Heartbeat)
    assert "offer first" in m.refused(TxCode.NO_OFFER)


def test_uptime_counts_up_and_down_blocks_and_closes_into_history() -> None:
    m = offered_market(params=PARAMS)  # block 1: every node offers (a sign of life)
    quiet = NODES[4].public_key
    while m.state.height < EPOCH - 1:
        beat(m, 4)  # node 4 never beats after its offer
        m.ok()
    live = m.state.liveness[quiet]
    # counted in blocks 1..19; heard at 1, so up while height - 1 <= 3: blocks 1..4
    assert (live.counted_blocks, live.up_blocks) == (EPOCH - 1, 4)
    assert m.state.uptime_permille()[NODES[0].public_key] == 1000
    beat(m, 4)
    outcome = m.ok()  # block 20 closes epoch 0
    assert outcome.epoch is not None
    shares = {s.operator: s for s in outcome.epoch.rewards.shares}
    assert shares[quiet].weight * 1000 == shares[NODES[0].public_key].weight * (4 * 1000 // 20)
    assert shares[quiet].reward < shares[NODES[0].public_key].reward
    assert m.state.liveness[quiet].history == [(0, 4, 20)]
    assert m.state.liveness[NODES[0].public_key].history == [(0, 20, 20)]
    assert (live.counted_blocks, live.up_blocks) == (0, 0)  # a fresh epoch
    copy = decode_state(m.state.encode())
    assert copy.liveness == m.state.liveness and copy.state_root() == m.state.state_root()


def test_a_down_node_is_not_scheduled_and_its_replica_is_rerouted_at_once() -> None:
    m = offered_market(params=PARAMS)
    job = m.submit(redundancy=2)
    beat(m)
    m.ok()
    a, b = m.replicas(job)
    silent = NODES.index(b)
    assigned_at = m.state.height
    for _ in range(LIVE.down_after_blocks + 1):
        beat(m, silent)
        m.ok()
    record = m.job(job)
    # b went silent after its heartbeat at the assignment block; down after 3 more blocks,
    # far sooner than the 8-block commit window
    assert m.state.height - assigned_at < LIVE.commit_window_blocks
    assert b.public_key in record.excluded and record.reroutes == 1
    assert record.status == JobStatus.ASSIGNED and len(record.replicas) == 2
    new = m.submit(redundancy=4)  # four replicas need four up nodes: only 4 of 5 are
    beat(m, silent)
    m.ok()
    assert b.public_key not in {r.node for r in m.job(new).replicas}
    assert len(m.job(new).replicas) == 4
    del a


def test_delivered_work_earns_its_share_of_the_emission() -> None:
    m = offered_market(params=PARAMS)
    job = m.submit(redundancy=2)
    beat(m)
    m.ok()
    workers = m.replicas(job)
    for node in workers:
        m.commit(node, job)
    beat(m)
    m.ok()
    for node in workers:
        m.reveal(node, job)
    beat(m)
    m.ok()
    assert m.job(job).status == JobStatus.SETTLED
    assert m.state.work_units() == {n.public_key: 36_000 for n in workers}
    while m.state.height < EPOCH - 1:
        beat(m)
        m.ok()
    beat(m)
    outcome = m.ok()
    assert outcome.epoch is not None
    rewards = outcome.epoch.rewards
    weight = {s.operator: s.weight for s in rewards.shares}
    total = sum(weight.values())
    work_part = rewards.minted * LIVE.work_reward_bps // 10_000
    stake_part = rewards.minted - work_part
    for share in rewards.shares:
        expected = stake_part * weight[share.operator] // total
        if share.operator in {n.public_key for n in workers}:
            expected += work_part * 36_000 // 72_000  # two workers, equal work
        assert share.reward == expected
    assert m.state.work_units() == {}  # closed with the epoch
