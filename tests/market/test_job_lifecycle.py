"""A job's whole life in the ledger: offers on chain, assignment by the block step, commit-
reveal of result digests, verdicts (agreement, majority, tie-breakers), settlement to the
operators' pools, and the penalties and reroutes for no-shows, withheld results and wrong
ones. Every test applies real signed transactions in real blocks and checks conservation
after each block."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.ledger import (
    BPS,
    PROTOCOL_ACCOUNT,
    BlockContext,
    BlockOutcome,
    LedgerParams,
    LedgerState,
    TxCode,
    apply_block,
    decode_state,
)
from consensus.ledger.genesis import Genesis, GenesisOperator
from consensus.ledger.job_records import REASON_NONE, JobRecord, JobStatus, SubmitJob, job_id
from consensus.ledger.market_records import (
    CommitResult,
    Heartbeat,
    OfferCapacity,
    PeerRtt,
    RevealResult,
)
from consensus.ledger.params import MarketParams
from consensus.market.scheduler import Reason
from consensus.market.verify import result_commitment, result_token
from p2p.announcements import GpuSpec
from p2p.identity import Identity
from p2p.wire import Record, sign

CHAIN = "gpumesh-lifecycle-test"
CHAIN_ID = CHAIN.encode()
NODES = tuple(Identity.derive("lifecycle-node", n) for n in range(5))
USER, OUTSIDER = Identity.derive("lifecycle-user", 0), Identity.derive("lifecycle-user", 1)
BALANCE = 10**12
SELF_STAKE = 1_000_000
COMMISSION_BPS = 1_000
FEE = 2
MARKET = MarketParams(
    commit_window_blocks=3,
    reveal_window_blocks=2,
    job_fee_bps=500,
    no_show_slash_bps=100,
    wrong_result_slash_bps=1_000,
    tie_breakers_max=2,
    spot_check_permille=0,  # audits have their own tests (test_spot_checks.py)
)
PARAMS = LedgerParams(
    epoch_blocks=1_000, min_stake=1_000, min_fee=FEE, tx_bytes_max=4096, market=MARKET
)
PRICE = 1_000_000
"""Per GPU-hour: a 36 s replica on one GPU earns 10,000."""
RIGHT = hashlib.sha256(b"the right answer").digest()
WRONG = hashlib.sha256(b"a wrong answer").digest()
A100 = (GpuSpec("A100", 2, 40_960),)


def salt_of(node: Identity, job: bytes) -> bytes:
    return hashlib.sha256(b"salt" + node.public_key + job).digest()


@dataclass
class Market:
    """A chain of five operator nodes and one funded user, driven block by block."""

    params: LedgerParams = PARAMS
    state: LedgerState = field(init=False)
    queue: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(signer, signed transaction) for the next block."""

    def __post_init__(self) -> None:
        allocations = tuple(sorted((i.public_key, BALANCE) for i in (*NODES, USER, OUTSIDER)))
        operators = tuple(GenesisOperator(n.public_key, SELF_STAKE, COMMISSION_BPS) for n in NODES)
        self.state = Genesis(CHAIN, allocations, operators, self.params).initial_state()

    def next_nonce(self, who: Identity) -> int:
        queued = sum(1 for signer, _ in self.queue if signer == who.public_key)
        return self.state.nonce(who.public_key) + queued

    def send(self, who: Identity, record_type: type[Record], **kw: Any) -> None:
        record = record_type(nonce=self.next_nonce(who), fee=FEE, **kw)
        self.queue.append((who.public_key, sign(record, who, CHAIN_ID).encode()))

    def block(self) -> BlockOutcome:
        txs = [data for _, data in self.queue]
        self.queue.clear()
        outcome = apply_block(self.state, txs, BlockContext(height=self.state.height + 1))
        self.state.check_conservation()
        return outcome

    def ok(self) -> BlockOutcome:
        outcome = self.block()
        assert not outcome.rejected, outcome.rejected
        return outcome

    def refused(self, code: TxCode) -> str:
        outcome = self.block()
        (rejection,) = outcome.rejected
        assert rejection.code is code, rejection
        return rejection.reason

    def offer(
        self, node: Identity, gpus: tuple[GpuSpec, ...] = A100, price: int = PRICE,
        rtt: tuple[PeerRtt, ...] = (),
    ) -> None:  # fmt: skip
        self.send(node, OfferCapacity, gpus=gpus, region="eu", price_per_gpu_hour=price,
                  rtt_ms=rtt)  # fmt: skip

    def submit(self, **kw: Any) -> bytes:
        terms: dict[str, Any] = dict(
            kind="matmul", params=b"\x01", inputs=(), gpu_model="", min_memory_mib=0, gpus=1,
            region="", max_rtt_ms=0, redundancy=2, deadline_height=self.state.height + 40,
            max_price_per_gpu_hour=2 * PRICE, max_hours_milli=100,
        )  # fmt: skip
        terms.update(kw)
        nonce = self.next_nonce(USER)
        self.send(USER, SubmitJob, **terms)
        return job_id(CHAIN_ID, USER.public_key, nonce)

    def job(self, job: bytes) -> JobRecord:
        return self.state.jobs[job]

    def replicas(self, job: bytes) -> list[Identity]:
        nodes = {n.public_key: n for n in NODES}
        return [nodes[r.node] for r in self.job(job).replicas]

    def commit(self, node: Identity, job: bytes, digest: bytes = RIGHT) -> None:
        commitment = result_commitment(job, node.public_key, digest, salt_of(node, job))
        self.send(node, CommitResult, job_id=job, commitment=commitment,
                  token=result_token(job, digest))  # fmt: skip

    def reveal(self, node: Identity, job: bytes, digest: bytes = RIGHT, ms: int = 36_000) -> None:
        self.send(node, RevealResult, job_id=job, digest=digest, salt=salt_of(node, job),
                  runtime_ms=ms)  # fmt: skip

    def pool(self, node: Identity) -> int:
        return self.state.operators[node.public_key].pool

    def balance(self, who: Identity | bytes) -> int:
        key = who if isinstance(who, bytes) else who.public_key
        return self.state.balance(key)


def offered_market(nodes: int = 5, params: LedgerParams = PARAMS) -> Market:
    m = Market(params)
    for node in NODES[:nodes]:
        m.offer(node)
    m.ok()
    return m


# ---------------------------------------------------------------------------------------------
# Offers


def test_offers_are_committed_replaced_and_withdrawn() -> None:
    m = Market()
    m.offer(NODES[0])
    m.ok()
    offer = m.state.offers[NODES[0].public_key]
    assert offer.gpus == A100 and offer.price_per_gpu_hour == PRICE and offer.height == 1
    m.offer(NODES[0], price=PRICE // 2)
    m.ok()
    assert m.state.offers[NODES[0].public_key].price_per_gpu_hour == PRICE // 2
    m.offer(NODES[0], gpus=())
    m.ok()
    assert NODES[0].public_key not in m.state.offers


def test_an_offer_needs_an_operator_and_distinct_models() -> None:
    m = Market()
    m.offer(OUTSIDER)
    assert "stake first" in m.refused(TxCode.UNKNOWN_OPERATOR)
    m.offer(NODES[0], gpus=(GpuSpec("A100", 1, 40_960), GpuSpec("a100", 1, 80_000)))
    m.refused(TxCode.MALFORMED)


# ---------------------------------------------------------------------------------------------
# The happy path


def test_a_job_is_assigned_committed_revealed_and_settled_with_exact_payments() -> None:
    m = offered_market()
    job = m.submit(redundancy=2)
    user_before = m.balance(USER)
    m.ok()
    record = m.job(job)
    assert record.status == JobStatus.ASSIGNED and record.last_reason == REASON_NONE
    assert len(record.replicas) == 2 and len({r.node for r in record.replicas}) == 2
    assert all(r.price_per_gpu_hour == PRICE for r in record.replicas)
    escrow = record.escrowed
    assert escrow == 2 * PRICE * 1 * 2 * 100 // 1000
    a, b = m.replicas(job)
    pools = {n.public_key: m.pool(n) for n in (a, b)}
    balances = {n.public_key: m.balance(n) for n in (a, b)}
    protocol = m.balance(PROTOCOL_ACCOUNT)

    m.commit(a, job)
    m.ok()
    assert m.job(job).status == JobStatus.ASSIGNED
    m.commit(b, job)
    m.ok()
    assert m.job(job).status == JobStatus.REVEALING
    m.reveal(a, job, ms=50_000)  # billing takes the winners' median runtime (the upper
    m.reveal(b, job, ms=36_000)  # of two): one replica reporting 0 cannot zero the pay
    m.ok()

    record = m.job(job)
    assert record.status == JobStatus.SETTLED and record.result_digest == RIGHT
    pay = PRICE * 1 * 50_000 // 3_600_000  # 13,888 each
    fee = pay * 500 // BPS
    commission = (pay - fee) * COMMISSION_BPS // BPS
    assert record.billed_ms == 50_000
    assert (record.paid, record.fee_paid) == (2 * (pay - fee), 2 * fee)
    assert record.refunded == escrow - 2 * pay
    for node in (a, b):
        assert m.balance(node) == balances[node.public_key] + commission - FEE * 2
        assert m.pool(node) == pools[node.public_key] + (pay - fee - commission)
    assert m.balance(PROTOCOL_ACCOUNT) == protocol + 2 * fee + 4 * FEE
    assert m.balance(USER) == user_before - FEE - escrow + record.refunded
    assert job not in m.state.escrows


def test_capacity_is_held_until_reveal_so_a_node_is_never_double_booked() -> None:
    m = offered_market(nodes=1)
    first = m.submit(redundancy=1, gpus=2)
    second = m.submit(redundancy=1, gpus=2)
    m.ok()
    placed = [j for j in (first, second) if m.job(j).status == JobStatus.ASSIGNED]
    waiting = [j for j in (first, second) if j not in placed]
    assert len(placed) == 1 and len(waiting) == 1
    assert m.job(waiting[0]).last_reason == Reason.NO_CAPACITY
    (node,) = m.replicas(placed[0])
    m.commit(node, placed[0])
    m.ok()
    assert m.job(waiting[0]).status == JobStatus.PENDING  # committed is not done
    m.reveal(node, placed[0])
    m.ok()
    assert m.job(placed[0]).status == JobStatus.SETTLED
    assert m.job(waiting[0]).status == JobStatus.ASSIGNED  # the GPUs came free


def test_nothing_fits_is_recorded_with_its_reason_until_an_offer_fits() -> None:
    m = offered_market()
    job = m.submit(max_price_per_gpu_hour=PRICE // 2)
    m.ok()
    assert m.job(job).status == JobStatus.PENDING
    assert m.job(job).last_reason == Reason.PRICE_TOO_LOW
    m.offer(NODES[0], price=PRICE // 4)
    m.offer(NODES[1], price=PRICE // 4)
    m.ok()
    # A lower ask is not enough while the class price (the market's floor, listed at PRICE
    # and falling one step per idle block) is above the job's cap: it waits for the market.
    for _ in range(20):
        if m.job(job).status != JobStatus.PENDING:
            break
        assert m.job(job).last_reason == Reason.PRICE_TOO_LOW
        m.ok()
    record = m.job(job)
    assert record.status == JobStatus.ASSIGNED and record.last_reason == REASON_NONE
    assert {r.node for r in record.replicas} == {NODES[0].public_key, NODES[1].public_key}
    (price,) = {r.price_per_gpu_hour for r in record.replicas}
    assert PRICE // 4 < price <= PRICE // 2  # the class price at assignment, under the cap


# ---------------------------------------------------------------------------------------------
# Commit-reveal rules


def test_commit_and_reveal_refusals() -> None:
    # Wide windows: each refusal below takes a block of its own.
    wide = MarketParams(commit_window_blocks=30, reveal_window_blocks=30, spot_check_permille=0)
    m = offered_market(params=LedgerParams(min_stake=1_000, min_fee=FEE, market=wide))
    job = m.submit(redundancy=2, deadline_height=100)
    m.ok()
    a, b = m.replicas(job)
    stranger = next(n for n in NODES if n not in (a, b))
    m.commit(stranger, job)
    m.refused(TxCode.NOT_REPLICA)
    m.reveal(a, job)
    m.refused(TxCode.WRONG_PHASE)  # nobody may reveal before every replica has committed
    m.commit(a, job)
    m.ok()
    m.commit(a, job)
    m.refused(TxCode.ALREADY_DONE)
    m.commit(b, job)
    m.ok()
    # Copying: b saw nothing before committing, and a's digest is only public after both
    # commitments are fixed; a reveal that does not open b's own commitment is refused.
    m.reveal(b, job, digest=WRONG)
    m.refused(TxCode.BAD_REVEAL)
    m.send(b, RevealResult, job_id=job, digest=RIGHT, salt=salt_of(a, job), runtime_ms=1)
    m.refused(TxCode.BAD_REVEAL)
    m.commit(b, job)
    m.refused(TxCode.WRONG_PHASE)
    m.reveal(a, job)
    m.reveal(b, job)
    m.ok()
    assert m.job(job).status == JobStatus.SETTLED
    m.reveal(a, job)
    m.refused(TxCode.WRONG_PHASE)


# ---------------------------------------------------------------------------------------------
# Verdicts


def test_the_minority_of_three_is_slashed_jailed_and_unpaid() -> None:
    m = offered_market()
    job = m.submit(redundancy=3)
    m.ok()
    a, b, c = m.replicas(job)
    for node in (a, b, c):
        m.commit(node, job, WRONG if node is c else RIGHT)
    m.ok()
    pool_c = m.pool(c)
    for node in (a, b, c):
        m.reveal(node, job, WRONG if node is c else RIGHT)
    m.ok()
    record = m.job(job)
    assert record.status == JobStatus.SETTLED and record.result_digest == RIGHT
    assert m.pool(c) == pool_c - pool_c * MARKET.wrong_result_slash_bps // BPS
    assert m.state.is_jailed(c.public_key)
    assert not m.state.is_jailed(a.public_key) and not m.state.is_jailed(b.public_key)
    pay = PRICE * 36_000 // 3_600_000
    assert record.paid == 2 * (pay - pay * 500 // BPS)


def tie_then_breaker(
    m: Market, breaker_digest: bytes
) -> tuple[bytes, Identity, Identity, Identity]:
    """A k=2 job whose tokens split 1-1 (honest RIGHT, liar WRONG), so a tie-breaker is drawn
    before anyone reveals; it commits to `breaker_digest`, then all three reveal. Returns
    (job, honest, liar, breaker)."""
    job = m.submit(redundancy=2)
    m.ok()
    honest, liar = m.replicas(job)
    m.commit(honest, job)
    m.commit(liar, job, WRONG)
    m.ok()  # the tokens split: the block step draws one more replica at once
    record = m.job(job)
    assert record.status == JobStatus.ASSIGNED and record.tie_breakers == 1
    assert not any(r.revealed for r in record.replicas)  # every digest still hidden
    (breaker,) = [n for n in m.replicas(job) if n not in (honest, liar)]
    assert not next(r for r in m.job(job).replicas if r.node == breaker.public_key).late
    m.commit(breaker, job, breaker_digest)
    m.ok()
    assert m.job(job).status == JobStatus.REVEALING
    for node, digest in ((honest, RIGHT), (liar, WRONG), (breaker, breaker_digest)):
        m.reveal(node, job, digest)
    m.ok()
    return job, honest, liar, breaker


def test_a_split_draws_a_blind_tie_breaker_and_the_minority_is_slashed() -> None:
    m = offered_market()
    pools = {n.public_key: m.pool(n) for n in NODES[:5]}
    job, honest, liar, breaker = tie_then_breaker(m, RIGHT)
    record = m.job(job)
    assert record.status == JobStatus.SETTLED and record.result_digest == RIGHT
    paid = {r.node for r in record.replicas if r.digest == RIGHT}
    assert paid == {honest.public_key, breaker.public_key}
    assert liar.public_key not in m.state.work_units()  # outvoted: not paid
    # the tie-breaker committed before any digest was public: its vote slashes the liar
    slash = pools[liar.public_key] * MARKET.wrong_result_slash_bps // BPS
    assert m.pool(liar) == pools[liar.public_key] - slash and slash > 0
    assert m.state.is_jailed(liar.public_key)
    for node in (honest, breaker):
        assert m.state.operators[node.public_key].slashed_total == 0
        assert not m.state.is_jailed(node.public_key)


def test_a_reveal_that_does_not_match_its_token_is_refused() -> None:
    """A lazy replica that copies another's token cannot open it: its own commitment opens
    only to the digest it committed, and that digest must match the token."""
    m = offered_market()
    job = m.submit(redundancy=2)
    m.ok()
    honest, lazy = m.replicas(job)
    m.commit(honest, job)
    guess = hashlib.sha256(b"a guess").digest()
    commitment = result_commitment(job, lazy.public_key, guess, salt_of(lazy, job))
    m.send(lazy, CommitResult, job_id=job, commitment=commitment,
           token=result_token(job, RIGHT))  # fmt: skip  # copied from the honest replica
    m.ok()
    assert m.job(job).status == JobStatus.REVEALING  # the tokens agree
    m.reveal(lazy, job, guess)
    assert "token" in m.refused(TxCode.BAD_REVEAL)
    m.reveal(lazy, job, RIGHT)  # what the token promises, but not what it committed to
    assert "commitment" in m.refused(TxCode.BAD_REVEAL)


def test_ties_without_tie_breakers_left_fail_the_job_and_refund_it() -> None:
    m = offered_market(nodes=2)  # no third operator: the tie-breaker can never be placed
    job = m.submit(redundancy=2, deadline_height=m.state.height + 15)
    m.ok()
    a, b = m.replicas(job)
    m.commit(a, job)
    m.commit(b, job, WRONG)
    m.ok()  # the tokens split: a tie-breaker is wanted before anyone reveals
    assert m.job(job).last_reason == Reason.NOT_ENOUGH_OPERATORS
    before = m.balance(USER)
    while m.job(job).status == JobStatus.ASSIGNED or m.job(job).status == JobStatus.PENDING:
        m.ok()
    record = m.job(job)
    assert record.status == JobStatus.FAILED and record.refunded == record.escrowed
    assert m.balance(USER) == before + record.escrowed
    assert not m.state.is_jailed(a.public_key) and not m.state.is_jailed(b.public_key)


# ---------------------------------------------------------------------------------------------
# Timeouts and rerouting


def test_a_no_show_is_penalised_excluded_and_its_replica_rerouted() -> None:
    m = offered_market()
    job = m.submit(redundancy=2)
    m.ok()
    worker, absent = m.replicas(job)
    m.commit(worker, job)
    m.ok()
    pool = m.pool(absent)
    for _ in range(MARKET.commit_window_blocks - 1):
        m.ok()
    record = m.job(job)  # the window closed at this block; the step rerouted at once
    assert record.reroutes == 1 and absent.public_key in record.excluded
    assert record.status == JobStatus.ASSIGNED
    assert m.pool(absent) == pool - pool * MARKET.no_show_slash_bps // BPS
    assert not m.state.is_jailed(absent.public_key)  # an outage is not malice
    (replacement,) = [n for n in m.replicas(job) if n is not worker]
    assert replacement is not absent
    m.commit(replacement, job)
    m.ok()
    m.reveal(worker, job)
    m.reveal(replacement, job)
    m.ok()
    record = m.job(job)
    assert record.status == JobStatus.SETTLED
    assert absent.public_key not in {r.node for r in record.replicas}


def test_a_withheld_result_is_penalised_and_rerouted() -> None:
    m = offered_market()
    job = m.submit(redundancy=2)
    m.ok()
    worker, withholder = m.replicas(job)
    m.commit(worker, job)
    m.commit(withholder, job)
    m.ok()
    m.reveal(worker, job)
    m.ok()
    pool = m.pool(withholder)
    while withholder.public_key not in m.job(job).excluded:
        m.ok()
    assert m.pool(withholder) == pool - pool * MARKET.no_show_slash_bps // BPS
    record = m.job(job)
    assert record.status == JobStatus.ASSIGNED and len(record.replicas) == 2
    (replacement,) = [n for n in m.replicas(job) if n is not worker]
    m.commit(replacement, job)
    m.ok()
    m.reveal(replacement, job)
    m.ok()
    assert m.job(job).status == JobStatus.SETTLED


def test_a_job_unfinished_at_its_deadline_fails_refunded_and_the_laggards_pay() -> None:
    m = offered_market(nodes=2)
    deadline = m.state.height + 1 + MARKET.commit_window_blocks + MARKET.reveal_window_blocks + 1
    job = m.submit(redundancy=2, deadline_height=deadline)
    m.ok()
    a, b = m.replicas(job)
    m.commit(a, job)
    m.commit(b, job)
    m.ok()
    m.reveal(a, job)
    m.ok()
    before = m.balance(USER)
    pool_b = m.pool(b)
    while m.state.height < deadline:
        m.ok()
    record = m.job(job)
    assert record.status == JobStatus.FAILED and record.closed_height == deadline
    assert record.refunded == record.escrowed and m.balance(USER) == before + record.escrowed
    assert m.pool(b) == pool_b - pool_b * MARKET.no_show_slash_bps // BPS
    assert job not in m.state.escrows


def test_a_job_whose_deadline_leaves_no_room_for_a_round_is_never_assigned() -> None:
    m = offered_market()
    job = m.submit(deadline_height=m.state.height + 3)
    m.ok()
    assert m.job(job).status == JobStatus.PENDING and not m.job(job).replicas
    while m.state.height < m.job(job).terms.deadline_height:
        m.ok()
    assert m.job(job).status == JobStatus.EXPIRED


# ---------------------------------------------------------------------------------------------
# State


def test_offers_and_replicas_survive_a_snapshot_round_trip() -> None:
    m = offered_market()
    job = m.submit(redundancy=2)
    m.ok()
    a, _ = m.replicas(job)
    m.commit(a, job)
    m.ok()
    copy = decode_state(m.state.encode())
    assert copy.state_root() == m.state.state_root()
    assert copy.offers == m.state.offers and copy.jobs == m.state.jobs
    assert m.state.clone().state_root() == m.state.state_root()


BEHAVIOURS = ("honest", "wrong", "absent", "withhold")


def wrong_of(node: Identity) -> bytes:
    return hashlib.sha256(WRONG + node.public_key).digest()


PLANS = st.lists(
    st.tuples(st.integers(1, 3), st.lists(st.sampled_from(BEHAVIOURS), min_size=5, max_size=5)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=40, deadline=None)
@given(PLANS)
def test_random_behaviours_conserve_supply_pay_once_and_never_slash_the_honest(
    jobs: list[tuple[int, list[str]]],
) -> None:
    """Each node behaves one way per job; whatever happens, the books balance every block,
    every job closes exactly once with its escrow gone, and no honest node is slashed.

    Cheaters do not collude: each wrong node reports its own wrong digest (as a lazy or
    faulty node would). Colluding cheaters that agree on one wrong digest can outvote an
    honest replica; that is the limit of majority verification, and why spot checks exist."""
    m = offered_market()
    plan: dict[bytes, dict[bytes, str]] = {}
    for redundancy, behaviours in jobs:
        job = m.submit(redundancy=redundancy, deadline_height=m.state.height + 60)
        plan[job] = {n.public_key: b for n, b in zip(NODES, behaviours, strict=True)}
    honest = {n.public_key for n in NODES}
    for behaviours in plan.values():
        honest -= {n for n, b in behaviours.items() if b != "honest"}
    pools = {n: m.state.operators[n].pool for n in honest}
    closed: dict[bytes, int] = {}
    for _ in range(70):
        m.block()
        for job, behaviours in plan.items():
            record = m.job(job)
            if record.status in (JobStatus.SETTLED, JobStatus.FAILED, JobStatus.EXPIRED):
                closed.setdefault(job, record.closed_height)
                assert job not in m.state.escrows
                continue
            for node in m.replicas(job):
                how = behaviours[node.public_key]
                replica = next(r for r in record.replicas if r.node == node.public_key)
                digest = wrong_of(node) if how == "wrong" else RIGHT
                works = how != "absent"
                if record.status == JobStatus.ASSIGNED and not replica.committed and works:
                    m.commit(node, job, digest)
                reveals = how not in ("absent", "withhold")
                if record.status == JobStatus.REVEALING and not replica.revealed and reveals:
                    m.reveal(node, job, digest)
    assert set(closed) == set(plan)
    for job, height in closed.items():
        assert m.job(job).closed_height == height  # closed once, never reopened
    for node in honest:
        assert m.state.operators[node].slashed_total == 0
        assert m.state.operators[node].pool >= pools[node]
    for job in plan:
        record = m.job(job)
        assert record.paid + record.fee_paid + record.refunded == record.escrowed + record.subsidy


@pytest.mark.parametrize("bad", [dict(commit_window_blocks=0), dict(reveal_window_blocks=0)])
def test_market_params_refuse_empty_windows(bad: dict[str, int]) -> None:
    from p2p.errors import InvalidRecord

    with pytest.raises(InvalidRecord, match="window"):
        MarketParams(**bad)


def test_a_job_that_exhausts_its_exclusion_list_fails_instead_of_halting_the_chain() -> None:
    from dataclasses import replace

    from consensus.ledger.job_records import EXCLUDED_MAX

    m = offered_market()
    job = m.submit(redundancy=2)
    m.ok()
    crowd = tuple(sorted(bytes([i]) * 32 for i in range(EXCLUDED_MAX)))
    m.state.jobs[job] = replace(m.job(job), excluded=crowd)  # 64 earlier failures
    before = m.balance(USER)
    for _ in range(MARKET.commit_window_blocks):  # nobody commits: one more exclusion
        m.ok()
    record = m.job(job)
    assert record.status == JobStatus.FAILED and record.refunded == record.escrowed
    assert m.balance(USER) == before + record.escrowed


def test_a_node_that_withdraws_its_offer_may_still_finish_its_replicas() -> None:
    params = LedgerParams(
        min_stake=1_000, min_fee=FEE,
        market=MarketParams(commit_window_blocks=12, reveal_window_blocks=4, heartbeat_blocks=1,
                            down_after_blocks=2, spot_check_permille=0),
    )  # fmt: skip
    m = offered_market(params=params)
    job = m.submit(redundancy=2)
    m.ok()
    leaving, staying = m.replicas(job)
    m.offer(leaving, gpus=())  # withdraws: no more heartbeats accepted from it
    m.ok()
    for _ in range(6):  # far past down_after_blocks, inside the commit window
        m.send(staying, Heartbeat)
        m.ok()
    assert leaving.public_key not in m.job(job).excluded
    m.commit(leaving, job)
    m.commit(staying, job)
    m.ok()
    m.reveal(leaving, job)
    m.reveal(staying, job)
    m.ok()
    assert m.job(job).status == JobStatus.SETTLED
    assert m.state.operators[leaving.public_key].slashed_total == 0
