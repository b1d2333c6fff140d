"""Measured round-trip times on chain: each node's offer carries the RTTs its pings measured
to its peers; a job names the node it was submitted through (`near`) and may cap the RTT;
the scheduler places it only on nodes measured (or being) that close, and prefers closer."""

from __future__ import annotations

from consensus.ledger.job_records import REASON_NONE, JobStatus
from consensus.ledger.market_records import PeerRtt
from consensus.market.scheduler import Reason
from tests.market.test_job_lifecycle import A100, NODES, PRICE, Market, offered_market


def offer_with_rtts(m: Market, node: int, rtts: dict[int, int]) -> None:
    table = tuple(
        sorted((PeerRtt(NODES[p].public_key, ms) for p, ms in rtts.items()), key=lambda r: r.node)
    )
    m.offer(NODES[node], rtt=table)


def test_a_job_near_a_node_runs_only_within_its_rtt_cap() -> None:
    m = offered_market()
    offer_with_rtts(m, 1, {0: 8})
    offer_with_rtts(m, 2, {0: 40})
    offer_with_rtts(m, 3, {0: 90})
    m.ok()
    near = NODES[0].public_key
    job = m.submit(redundancy=2, max_rtt_ms=50, near=near)
    m.ok()
    record = m.job(job)
    assert record.status == JobStatus.ASSIGNED and record.last_reason == REASON_NONE
    # within 50 ms of node 0: itself (0 ms), node 1 (8 ms) and node 2 (40 ms); node 3 (90 ms)
    # and node 4 (no measurement: the 150 ms guess) are not
    assert {r.node for r in record.replicas} <= {NODES[i].public_key for i in (0, 1, 2)}
    far = m.submit(redundancy=4, max_rtt_ms=50, near=near)
    m.ok()
    assert m.job(far).status == JobStatus.PENDING
    assert m.job(far).last_reason == Reason.NOT_ENOUGH_OPERATORS


def test_no_node_close_enough_is_reported_as_rtt_too_high() -> None:
    m = offered_market(nodes=3)
    for i in range(3):
        offer_with_rtts(m, i, {4: 200})
    m.ok()
    job = m.submit(redundancy=1, max_rtt_ms=20, near=NODES[4].public_key)
    m.ok()
    assert m.job(job).last_reason == Reason.RTT_TOO_HIGH


def test_offer_rtts_are_committed_and_replaced() -> None:
    m = offered_market()
    offer_with_rtts(m, 1, {0: 8, 2: 12})
    m.ok()
    assert [(p.node, p.ms) for p in m.state.offers[NODES[1].public_key].rtt_ms] == sorted(
        [(NODES[0].public_key, 8), (NODES[2].public_key, 12)]
    )
    m.offer(NODES[1], price=PRICE)
    m.ok()
    assert m.state.offers[NODES[1].public_key].rtt_ms == ()
    assert m.state.offers[NODES[1].public_key].gpus == A100


def test_rtts_must_name_other_nodes_once_in_order() -> None:
    from consensus.ledger import TxCode

    m = offered_market()
    a, b = sorted((NODES[2].public_key, NODES[3].public_key))
    m.offer(NODES[1], rtt=(PeerRtt(b, 5), PeerRtt(a, 5)))
    m.refused(TxCode.MALFORMED)
    m.offer(NODES[1], rtt=(PeerRtt(a, 5), PeerRtt(a, 6)))
    m.refused(TxCode.MALFORMED)
    m.offer(NODES[1], rtt=(PeerRtt(NODES[1].public_key, 0),))
    m.refused(TxCode.MALFORMED)
