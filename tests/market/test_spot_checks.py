"""Spot checks: when a job's last replica commits, the protocol may draw one more replica on
yet another operator (odds `spot_check_permille`, from the parent block's hash), paid by the
protocol account; it catches a lone lazy replica, and is skipped when no operator has room."""

from __future__ import annotations

import hashlib

from consensus.ledger import PROTOCOL_ACCOUNT, LedgerParams
from consensus.ledger.job_flow import spot_checked
from consensus.ledger.job_records import SPOT_DUE, SPOT_SKIPPED, SPOT_WANTED, JobStatus
from consensus.ledger.params import MarketParams
from consensus.ledger.tx import Transfer
from node.cli_job import _summary
from node.job_views import job_view
from tests.market.test_job_lifecycle import (
    FEE,
    OUTSIDER,
    PRICE,
    RIGHT,
    WRONG,
    Market,
    offered_market,
)

ALWAYS = LedgerParams(
    min_stake=1_000, min_fee=FEE,
    market=MarketParams(commit_window_blocks=10, reveal_window_blocks=5,
                        spot_check_permille=1000),
)  # fmt: skip


def commit_all(m: Market, job: bytes, digests: dict[int, bytes] | None = None) -> None:
    for i, node in enumerate(m.replicas(job)):
        if not next(r for r in m.job(job).replicas if r.node == node.public_key).committed:
            m.commit(node, job, (digests or {}).get(i, RIGHT))
    m.ok()
    if m.job(job).spot_check == SPOT_DUE:
        m.ok()  # the block after the last commitment draws whether to audit


def test_an_audit_replica_joins_after_the_commits_and_the_protocol_pays_it() -> None:
    m = offered_market(params=ALWAYS)
    m.send(OUTSIDER, Transfer, to=PROTOCOL_ACCOUNT, amount=1_000_000)  # fees, in a real chain
    job = m.submit(redundancy=2)
    m.ok()
    first = {n.public_key for n in m.replicas(job)}
    commit_all(m, job)
    record = m.job(job)  # both committed: the draw added an audit, placed in the same block
    assert record.spot_check == SPOT_WANTED and record.status == JobStatus.ASSIGNED
    assert len(record.replicas) == 3 and first < {r.node for r in record.replicas}
    commit_all(m, job)
    assert m.job(job).status == JobStatus.REVEALING
    protocol = m.balance(PROTOCOL_ACCOUNT)
    for node in m.replicas(job):
        m.reveal(node, job)
    m.ok()
    record = m.job(job)
    assert record.status == JobStatus.SETTLED
    pay = PRICE * 36_000 // 3_600_000
    assert record.subsidy == pay  # the third winner, paid by the protocol
    assert record.paid + record.fee_paid + record.refunded == record.escrowed + record.subsidy
    fees = 3 * (pay * 500 // 10_000)
    assert m.balance(PROTOCOL_ACCOUNT) == protocol - pay + fees + 3 * FEE
    view = job_view(m.state, job)  # what `gpumesh job status` shows says who paid what
    assert view is not None and view["subsidy"] == pay and view["audit"] == "wanted"
    assert view["paid"] + view["fee_paid"] + view["refunded"] == view["escrowed"] + pay  # type: ignore[operator]
    assert f"paid {pay} by the protocol, not the escrow" in _summary(view)


def test_an_audit_catches_a_lone_lazy_replica_in_a_blind_majority() -> None:
    """k = 1: nothing to compare the lazy replica with but the audit. Their tokens split,
    so a tie-breaker is drawn before anyone reveals; all three committed blind, and the
    2-1 majority slashes the lazy one."""
    m = offered_market(params=ALWAYS)
    job = m.submit(redundancy=1)
    m.ok()
    (lazy,) = m.replicas(job)
    m.commit(lazy, job, WRONG)
    m.ok()
    m.ok()  # the next block draws the audit
    record = m.job(job)
    assert record.spot_check == SPOT_WANTED and record.status == JobStatus.ASSIGNED
    (auditor,) = [n for n in m.replicas(job) if n is not lazy]
    audit = next(r for r in record.replicas if r.node == auditor.public_key)
    assert audit.audit and not audit.late  # drawn before any digest was public: blind
    m.commit(auditor, job)
    m.ok()  # the tokens split 1-1: one more replica, still before any reveal
    record = m.job(job)
    assert record.status == JobStatus.ASSIGNED and record.tie_breakers == 1
    (breaker,) = [n for n in m.replicas(job) if n not in (lazy, auditor)]
    assert not next(r for r in record.replicas if r.node == breaker.public_key).late
    m.commit(breaker, job)
    m.ok()
    assert m.job(job).status == JobStatus.REVEALING
    for node in (lazy, auditor, breaker):
        m.reveal(node, job, WRONG if node is lazy else RIGHT)
    m.ok()
    record = m.job(job)
    assert record.status == JobStatus.SETTLED and record.result_digest == RIGHT
    assert m.state.is_jailed(lazy.public_key)  # outvoted 2-1 by blind replicas: slashed
    assert m.state.operators[lazy.public_key].slashed_total > 0
    assert m.state.operators[auditor.public_key].slashed_total == 0
    assert m.state.operators[breaker.public_key].slashed_total == 0


def test_an_audit_with_no_room_is_skipped_not_waited_for() -> None:
    m = offered_market(nodes=2, params=ALWAYS)  # two operators: no third for an audit
    job = m.submit(redundancy=2)
    m.ok()
    commit_all(m, job)
    record = m.job(job)
    assert record.spot_check == SPOT_SKIPPED and record.status == JobStatus.REVEALING
    for node in m.replicas(job):
        m.reveal(node, job)
    m.ok()
    assert m.job(job).status == JobStatus.SETTLED and m.job(job).subsidy == 0


def test_the_draw_has_the_configured_odds() -> None:
    m = Market(LedgerParams(market=MarketParams(spot_check_permille=250)))
    parent = hashlib.sha256(b"parent").digest()
    hits = sum(
        spot_checked(m.state, hashlib.sha256(b"%d" % i).digest(), parent) for i in range(2000)
    )
    assert 400 <= hits <= 600  # 25% of 2,000, deterministic
    m = Market(LedgerParams(market=MarketParams(spot_check_permille=0)))
    assert not any(spot_checked(m.state, bytes([i]) * 32, parent) for i in range(100))
