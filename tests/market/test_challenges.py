"""Challenge jobs: the protocol probes a drawn node with a job it pays for, beside a second
node on the same work; a probed node that does not answer is a no-show like any other."""

from __future__ import annotations

from consensus.ledger import PROTOCOL_ACCOUNT, LedgerParams
from consensus.ledger.job_records import JobStatus, job_id
from consensus.ledger.params import MarketParams
from consensus.ledger.tx import Transfer
from tests.market.test_job_lifecycle import FEE, OUTSIDER, Market, offered_market

EVERY = 5
PROBES = LedgerParams(
    min_stake=1_000, min_fee=FEE,
    market=MarketParams(commit_window_blocks=4, reveal_window_blocks=3, spot_check_permille=0,
                        challenge_every_blocks=EVERY),
)  # fmt: skip


def funded() -> Market:
    m = offered_market(params=PROBES)
    m.send(OUTSIDER, Transfer, to=PROTOCOL_ACCOUNT, amount=10**9)
    m.ok()
    return m


def probe_at(m: Market, height: int) -> bytes:
    while m.state.height < height:
        m.ok()
    return job_id(m.state.chain_id, PROTOCOL_ACCOUNT, height)


def test_a_probe_is_a_protocol_paid_job_on_two_operators_that_settles() -> None:
    m = funded()
    job = probe_at(m, EVERY)
    record = m.job(job)
    assert record.submitter == PROTOCOL_ACCOUNT and record.status == JobStatus.ASSIGNED
    assert record.terms.kind == "matmul" and len({r.node for r in record.replicas}) == 2
    for node in m.replicas(job):
        m.commit(node, job)
    m.ok()
    for node in m.replicas(job):
        m.reveal(node, job)
    m.ok()
    record = m.job(job)
    assert record.status == JobStatus.SETTLED and record.paid > 0
    assert record.paid + record.fee_paid + record.refunded == record.escrowed


def test_a_probed_node_that_does_not_answer_is_a_no_show() -> None:
    m = funded()
    job = probe_at(m, EVERY)
    silent, answering = m.replicas(job)
    pool = m.pool(silent)
    m.commit(answering, job)
    for _ in range(PROBES.market.commit_window_blocks + 1):
        m.ok()
    assert silent.public_key in m.job(job).excluded
    assert m.pool(silent) < pool  # slashed as a no-show
    assert m.state.operators[answering.public_key].slashed_total == 0


def test_no_probe_without_the_money_for_it() -> None:
    m = offered_market(params=PROBES)  # the protocol account holds only a few fees
    probe_at(m, EVERY)
    assert not any(r.submitter == PROTOCOL_ACCOUNT for r in m.state.jobs.values())
