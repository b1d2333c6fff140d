"""Runtime anomaly detection (node/anomaly.py) and what a flag does on chain (`FlagNode`:
every job of the flagged node is audited for a while)."""

from __future__ import annotations

import random

from consensus.ledger import LedgerParams, TxCode
from consensus.ledger.job_records import SPOT_DUE, SPOT_SKIPPED, JobStatus
from consensus.ledger.liveness import is_watched
from consensus.ledger.market_records import FlagNode
from consensus.ledger.params import MarketParams
from node.anomaly import Sample, anomalies_among, find_anomalies, samples_from_state
from node.job_views import uptime_view
from tests.market.test_job_lifecycle import FEE, NODES, OUTSIDER, Market, offered_market

QUIET = LedgerParams(
    min_stake=1_000, min_fee=FEE,
    market=MarketParams(commit_window_blocks=10, reveal_window_blocks=5,
                        spot_check_permille=0, flags_per_epoch_max=1),
)  # fmt: skip


def test_a_node_far_off_its_class_is_found_and_its_peers_are_not() -> None:
    rng = random.Random(1)
    samples = [
        Sample(bytes([n]) * 32, "h100", bytes([j]) * 32, rng.gauss(0.0, 0.1))
        for n in range(4) for j in range(10)
    ]  # fmt: skip
    samples += [Sample(b"\x09" * 32, "h100", bytes([j]) * 32, 2.5 + rng.gauss(0, 0.1))
                for j in range(10)]  # fmt: skip
    samples += [Sample(b"\x0a" * 32, "h100", b"\x00" * 32, 4.0)] * 3  # too few samples
    samples += [
        Sample(bytes([20 + n]) * 32, "rtx", bytes([j]) * 32, 3.0)
        for n in range(2)
        for j in range(10)
    ]  # fmt: skip  (two peers: not judged)
    found = find_anomalies(samples)
    assert [a.node for a in found] == [b"\x09" * 32]
    assert found[0].gpu_class == "h100" and found[0].typical > 2


def run_job(m: Market, slow: int, factor: int) -> bytes:
    job = m.submit(redundancy=4)
    m.ok()
    for node in m.replicas(job):
        m.commit(node, job)
    m.ok()
    for node in m.replicas(job):
        ms = 36_000 * (factor if node is NODES[slow] else 1)
        m.reveal(node, job, ms=ms)
    m.ok()
    assert m.job(job).status == JobStatus.SETTLED
    return job


def test_the_detector_reads_settled_jobs_from_the_ledger() -> None:
    m = offered_market(params=QUIET)
    for _ in range(6):
        run_job(m, slow=2, factor=8)  # node 2 takes 8x as long as its A100 peers
    found = anomalies_among(samples_from_state(m.state))
    assert [a.node for a in found] == [NODES[2].public_key]
    assert anomalies_among(samples_from_state(m.state), exclude=(NODES[2].public_key,)) == []


def test_a_flag_puts_every_job_of_the_node_under_audit() -> None:
    m = offered_market(params=QUIET)
    evidence = run_job(m, slow=2, factor=8)
    target = NODES[2]
    m.send(NODES[0], FlagNode, node=target.public_key, job_id=evidence)
    m.ok()
    assert is_watched(m.state, target.public_key)
    m.send(NODES[0], FlagNode, node=NODES[3].public_key, job_id=evidence)
    m.refused(TxCode.RATE_LIMITED)  # one flag per operator per epoch here
    m.send(NODES[1], FlagNode, node=NODES[1].public_key, job_id=evidence)
    m.refused(TxCode.MALFORMED)  # not oneself
    m.send(OUTSIDER, FlagNode, node=target.public_key, job_id=evidence)
    m.refused(TxCode.OPERATOR_INACTIVE)
    m.send(NODES[1], FlagNode, node=target.public_key, job_id=bytes(32))
    m.refused(TxCode.UNKNOWN_JOB)
    job = m.submit(redundancy=5)  # every node, the watched one included
    m.ok()
    for node in m.replicas(job):
        m.commit(node, job)
    m.ok()
    assert m.job(job).spot_check == SPOT_DUE  # audit odds are 0, but a watched node is in
    m.ok()  # the draw is certain; with no sixth operator the audit is then skipped
    assert m.job(job).spot_check == SPOT_SKIPPED
    assert m.job(job).status == JobStatus.REVEALING


def test_an_operator_that_flags_without_an_offer_is_not_listed_as_a_node_down() -> None:
    """Flagging gives the sender a liveness row (its flag count) with no heartbeat: the
    uptime view listed that operator as a node, down since block 0."""
    m = offered_market(nodes=4, params=QUIET)  # NODES[4] is an active operator, no offer
    evidence = run_job(m, slow=2, factor=8)
    m.send(NODES[4], FlagNode, node=NODES[2].public_key, job_id=evidence)
    m.ok()
    assert m.state.liveness[NODES[4].public_key].flags_sent == 1
    listed = {n["node"] for n in uptime_view(m.state, block_ms=1_000)["nodes"]}
    assert listed == {n.public_key.hex() for n in NODES[:4]}
    assert uptime_view(m.state, 1_000, node=NODES[4].public_key)["nodes"] == []
