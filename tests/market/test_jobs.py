"""Job lifecycle transactions (consensus/market/jobs.py), through `apply_block` on a genesis
state: SubmitJob escrows exactly its max cost, CancelJob refunds exactly, every refusal has
its code and changes no balance, and random submits and cancels never break conservation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import consensus.ledger.job_records as records
import consensus.market.jobs as jobs
from consensus.ledger import (
    PROTOCOL_ACCOUNT,
    BlockContext,
    BlockOutcome,
    Genesis,
    GenesisOperator,
    InvalidTransaction,
    LedgerParams,
    LedgerState,
    TxCode,
    apply_block,
    check_tx,
    decode_tx,
)
from consensus.market.jobs import (
    CancelJob,
    JobRecord,
    JobStatus,
    SubmitJob,
    expire_jobs,
    get_job,
    job_id,
    job_request,
    pending_jobs,
)
from consensus.market.scheduler import Reason
from p2p.errors import InvalidRecord
from p2p.identity import Identity
from p2p.wire import Record, sign

CHAIN = "gpumesh-jobs-test"
CHAIN_ID = CHAIN.encode()
OP, ALICE, BOB, CAROL = (Identity.derive("test-jobs", n) for n in range(4))
USERS = (ALICE, BOB, CAROL)
BALANCE = 1_000_000
FEE = 2
PARAMS = LedgerParams(epoch_blocks=7, min_stake=1_000, min_fee=FEE, tx_bytes_max=4096)
HASH = bytes(range(32))


def fresh() -> LedgerState:
    allocations = tuple(sorted((i.public_key, BALANCE) for i in (OP, *USERS)))
    operators = (GenesisOperator(OP.public_key, 10_000, 1_000),)
    return Genesis(CHAIN, allocations, operators, PARAMS).initial_state()


def submit(nonce: int, **kw: Any) -> SubmitJob:
    terms: dict[str, Any] = dict(
        nonce=nonce,
        fee=FEE,
        kind="matmul",
        params=b"\x93\x01\x02\x03",
        inputs=(HASH,),
        gpu_model="",
        min_memory_mib=16_384,
        gpus=2,
        region="",
        max_rtt_ms=0,
        redundancy=3,
        deadline_height=100,
        max_price_per_gpu_hour=1_000,
        max_hours_milli=1_500,
    )
    terms.update(kw)
    return SubmitJob(**terms)


def cancel(nonce: int, job: bytes) -> CancelJob:
    return CancelJob(nonce=nonce, fee=FEE, job_id=job)


def tx(ident: Identity, record: Record) -> bytes:
    return sign(record, ident, CHAIN_ID).encode()


def block(state: LedgerState, *txs: bytes) -> BlockOutcome:
    outcome = apply_block(state, list(txs), BlockContext(height=state.height + 1))
    state.check_conservation()
    return outcome


def applied(state: LedgerState, *txs: bytes) -> BlockOutcome:
    outcome = block(state, *txs)
    assert not outcome.rejected, outcome.rejected
    return outcome


def refused(state: LedgerState, data: bytes, code: TxCode) -> str:
    """Applied alone in a block: refused with `code`, and no balance, escrow or job moved."""
    before = (dict(state.accounts), dict(state.escrows), dict(jobs.jobs_of(state)))
    outcome = block(state, data)
    assert not outcome.receipts
    (rejection,) = outcome.rejected
    assert rejection.code is code, rejection
    after = (dict(state.accounts), dict(state.escrows), dict(jobs.jobs_of(state)))
    assert after == before
    return rejection.reason


def balance(state: LedgerState, ident: Identity) -> int:
    return state.balance(ident.public_key)


def nonce(state: LedgerState, ident: Identity) -> int:
    return state.nonce(ident.public_key)


def id_of(ident: Identity, n: int) -> bytes:
    return job_id(CHAIN_ID, ident.public_key, n)


# ---------------------------------------------------------------------------------------------
# Submit


def test_submit_locks_exactly_max_cost_and_records_the_job() -> None:
    state = fresh()
    record = submit(0)
    assert record.max_cost == 1_000 * 2 * 3 * 1_500 // 1000 == 9_000
    protocol = state.balance(PROTOCOL_ACCOUNT)
    outcome = applied(state, tx(ALICE, record))
    assert outcome.receipts[0].kind == "SubmitJob"
    job = id_of(ALICE, 0)
    assert balance(state, ALICE) == BALANCE - FEE - 9_000
    assert state.escrows[job].payer == ALICE.public_key
    assert state.escrows[job].amount == 9_000
    assert state.totals().escrowed == 9_000
    assert state.balance(PROTOCOL_ACCOUNT) == protocol + FEE
    stored = get_job(state, job)
    # The block step tried to schedule it at once and recorded why it could not: no offers.
    expected = JobRecord(ALICE.public_key, 1, JobStatus.PENDING, 9_000, record)
    assert stored == replace(expected, last_reason=Reason.NO_NODES)
    assert pending_jobs(state) == [(job, stored)]


def test_max_cost_rounds_down_to_whole_units() -> None:
    state = fresh()
    record = submit(0, max_price_per_gpu_hour=3, gpus=1, redundancy=1, max_hours_milli=500)
    assert record.max_cost == 1
    applied(state, tx(ALICE, record))
    assert state.escrows[id_of(ALICE, 0)].amount == 1


def test_job_ids_are_per_chain_sender_and_nonce() -> None:
    state = fresh()
    applied(state, tx(ALICE, submit(0)), tx(ALICE, submit(1)), tx(BOB, submit(0)))
    ids = {id_of(ALICE, 0), id_of(ALICE, 1), id_of(BOB, 0)}
    assert len(ids) == 3
    assert set(state.escrows) == ids
    assert job_id(b"other-chain", ALICE.public_key, 0) not in ids


def test_insufficient_funds_counts_the_fee() -> None:
    state = fresh()
    spendable = BALANCE - FEE
    exact = submit(0, gpus=1, redundancy=1, max_price_per_gpu_hour=spendable, max_hours_milli=1000)
    too_much = replace(exact, max_price_per_gpu_hour=spendable + 1)
    reason = refused(state, tx(ALICE, too_much), TxCode.INSUFFICIENT_FUNDS)
    assert str(spendable) in reason
    applied(state, tx(ALICE, exact))
    assert balance(state, ALICE) == 0
    assert state.escrows[id_of(ALICE, 0)].amount == spendable


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (dict(kind="shell"), TxCode.BAD_JOB),
        (dict(kind=""), TxCode.BAD_JOB),
        (dict(kind="Matmul"), TxCode.BAD_JOB),
        (dict(gpus=0), TxCode.BAD_JOB),
        (dict(redundancy=0), TxCode.BAD_JOB),
        (dict(deadline_height=1), TxCode.DEADLINE_PASSED),
        (dict(deadline_height=0), TxCode.DEADLINE_PASSED),
        (dict(max_price_per_gpu_hour=0), TxCode.BELOW_MINIMUM),
        (dict(max_hours_milli=0), TxCode.BELOW_MINIMUM),
        (dict(max_price_per_gpu_hour=1, gpus=1, redundancy=1, max_hours_milli=999),
         TxCode.BELOW_MINIMUM),
    ],
    ids=lambda v: str(v),
)  # fmt: skip
def test_bad_terms_are_refused(change: dict[str, Any], code: TxCode) -> None:
    state = fresh()
    refused(state, tx(ALICE, submit(0, **change)), code)
    assert nonce(state, ALICE) == 0


def test_the_deadline_must_be_after_the_including_block() -> None:
    state = fresh()
    applied(state)  # height 1
    refused(state, tx(ALICE, submit(0, deadline_height=2)), TxCode.DEADLINE_PASSED)  # block 2
    applied(state, tx(ALICE, submit(0, deadline_height=4)))  # block 3
    assert get_job(state, id_of(ALICE, 0)) is not None


@pytest.mark.parametrize("kind", jobs.JOB_KINDS)
def test_every_known_kind_is_accepted(kind: str) -> None:
    state = fresh()
    applied(state, tx(ALICE, submit(0, kind=kind)))


def test_replaying_a_submit_is_a_bad_nonce() -> None:
    state = fresh()
    data = tx(ALICE, submit(0))
    outcome = block(state, data, data)
    assert len(outcome.receipts) == 1
    assert [r.code for r in outcome.rejected] == [TxCode.BAD_NONCE]
    refused(state, data, TxCode.BAD_NONCE)
    assert state.totals().escrowed == submit(0).max_cost


def test_wire_bounds_are_enforced_when_building() -> None:
    for bad in (
        dict(gpus=records.GPUS_MAX + 1),
        dict(redundancy=records.REDUNDANCY_MAX + 1),
        dict(params=bytes(records.PARAMS_BYTES_MAX + 1)),
        dict(inputs=(HASH,) * (records.INPUTS_MAX + 1)),
        dict(inputs=(b"short",)),
        dict(kind="x" * 17),
        dict(region="eu\n"),
    ):
        with pytest.raises(InvalidRecord):
            submit(0, **bad)
    with pytest.raises(InvalidRecord):
        cancel(0, bytes(31))


def test_check_tx_changes_nothing() -> None:
    state = fresh()
    root = state.state_root()
    check_tx(state, sign(submit(0), ALICE, CHAIN_ID), BlockContext(height=1))
    assert state.state_root() == root
    assert state.jobs == {}
    with pytest.raises(InvalidTransaction) as info:
        check_tx(state, sign(cancel(0, HASH), ALICE, CHAIN_ID), BlockContext(height=1))
    assert info.value.code is TxCode.UNKNOWN_JOB
    assert state.jobs == {}


# ---------------------------------------------------------------------------------------------
# Cancel


def test_cancel_by_the_submitter_refunds_exactly() -> None:
    state = fresh()
    applied(state, tx(ALICE, submit(0)))
    job = id_of(ALICE, 0)
    applied(state, tx(ALICE, cancel(1, job)))
    assert balance(state, ALICE) == BALANCE - 2 * FEE
    assert job not in state.escrows
    assert state.totals().escrowed == 0
    record = get_job(state, job)
    assert record is not None and record.status == JobStatus.CANCELLED
    assert pending_jobs(state) == []


def test_submit_and_cancel_in_one_block() -> None:
    state = fresh()
    applied(state, tx(ALICE, submit(0)), tx(ALICE, cancel(1, id_of(ALICE, 0))))
    assert balance(state, ALICE) == BALANCE - 2 * FEE
    assert state.escrows == {}


def test_cancel_by_another_account_is_refused() -> None:
    state = fresh()
    applied(state, tx(ALICE, submit(0)))
    job = id_of(ALICE, 0)
    refused(state, tx(BOB, cancel(0, job)), TxCode.NOT_SUBMITTER)
    assert state.escrows[job].amount == submit(0).max_cost


def test_double_cancel_is_refused() -> None:
    state = fresh()
    applied(state, tx(ALICE, submit(0)))
    job = id_of(ALICE, 0)
    applied(state, tx(ALICE, cancel(1, job)))
    reason = refused(state, tx(ALICE, cancel(2, job)), TxCode.JOB_NOT_PENDING)
    assert "cancelled" in reason
    assert balance(state, ALICE) == BALANCE - 2 * FEE


def test_double_cancel_in_one_block_is_refused() -> None:
    state = fresh()
    applied(state, tx(ALICE, submit(0)))
    job = id_of(ALICE, 0)
    outcome = block(state, tx(ALICE, cancel(1, job)), tx(ALICE, cancel(2, job)))
    assert len(outcome.receipts) == 1
    assert [r.code for r in outcome.rejected] == [TxCode.JOB_NOT_PENDING]
    assert balance(state, ALICE) == BALANCE - 2 * FEE


def test_cancel_of_an_unknown_job_is_refused() -> None:
    state = fresh()
    refused(state, tx(ALICE, cancel(0, HASH)), TxCode.UNKNOWN_JOB)


def test_cancel_at_the_deadline_is_refused_and_expiry_refunds() -> None:
    state = fresh()
    applied(state, tx(ALICE, submit(0, deadline_height=3)))  # block 1
    job = id_of(ALICE, 0)
    applied(state)  # block 2
    pending = get_job(state, job)
    assert pending is not None and pending.status == JobStatus.PENDING
    assert expire_jobs(state.clone(), 2) == ()  # not yet due at height 2
    # block 3: the cancel is refused (deadline reached), then the block step expires the job
    outcome = block(state, tx(ALICE, cancel(1, job)))
    assert [r.code for r in outcome.rejected] == [TxCode.DEADLINE_PASSED]
    assert state.height == 3 and job not in state.escrows
    state.check_conservation()
    assert balance(state, ALICE) == BALANCE - FEE
    record = get_job(state, job)
    assert record is not None and record.status == JobStatus.EXPIRED
    assert expire_jobs(state, state.height + 10) == ()
    reason = refused(state, tx(ALICE, cancel(1, job)), TxCode.JOB_NOT_PENDING)
    assert "expired" in reason


# ---------------------------------------------------------------------------------------------
# Encoding and the scheduler's view


def test_records_round_trip() -> None:
    full = submit(
        7,
        kind="render",
        params=bytes(range(256)) * 2,
        inputs=tuple(bytes([i]) * 32 for i in range(records.INPUTS_MAX)),
        gpu_model="NVIDIA H100 80GB HBM3",
        region="eu-west",
        max_rtt_ms=40,
        gpus=records.GPUS_MAX,
        redundancy=records.REDUNDANCY_MAX,
    )
    for record in (submit(0), full, cancel(3, HASH)):
        encoded = record.encode()
        assert type(record).decode(encoded) == record
        assert type(record).decode(encoded).encode() == encoded
        signed = sign(record, ALICE, CHAIN_ID)
        back = decode_tx(signed.encode(), chain_id=CHAIN_ID, tx_bytes_max=1 << 16)
        assert back == signed and type(back.record) is type(record)
    stored = JobRecord(ALICE.public_key, 5, JobStatus.CANCELLED, full.max_cost, full)
    assert JobRecord.decode(stored.encode()) == stored


def test_an_oversized_submit_is_too_large_for_the_default_limit() -> None:
    big = submit(0, params=bytes(records.PARAMS_BYTES_MAX), inputs=(HASH,) * records.INPUTS_MAX)
    with pytest.raises(InvalidTransaction) as info:
        decode_tx(tx(ALICE, big), chain_id=CHAIN_ID, tx_bytes_max=LedgerParams().tx_bytes_max)
    assert info.value.code is TxCode.TOO_LARGE


def test_job_request_reads_empty_and_zero_as_any() -> None:
    state = fresh()
    applied(
        state,
        tx(ALICE, submit(0)),
        tx(BOB, submit(0, gpu_model="NVIDIA A100", region="us-east", max_rtt_ms=50)),
    )
    (a, ra), (b, rb) = sorted(pending_jobs(state), key=lambda p: p[1].submitter != ALICE.public_key)
    any_request = job_request(a, ra)
    assert (any_request.gpu_model, any_request.region, any_request.max_rtt_ms) == (None,) * 3
    assert (any_request.gpus_needed, any_request.redundancy) == (2, 3)
    assert any_request.min_memory_mib == 16_384 and any_request.max_price_per_gpu_hour == 1_000
    assert any_request.submitter == ALICE.public_key and any_request.job_id == a
    specific = job_request(b, rb)
    assert (specific.gpu_model, specific.region, specific.max_rtt_ms) == (
        "NVIDIA A100",
        "us-east",
        50,
    )


# ---------------------------------------------------------------------------------------------
# Conservation under random use


actions = st.lists(
    st.tuples(
        st.sampled_from(["submit", "cancel", "cancel_other", "empty", "expire"]),
        st.integers(0, len(USERS) - 1),
        st.integers(0, 400_000),  # price
        st.integers(1, 8),  # deadline offset
        st.integers(0, 10),  # which job to cancel
    ),
    min_size=5,
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(actions)
def test_random_submits_and_cancels_conserve_supply(
    steps: list[tuple[str, int, int, int, int]],
) -> None:
    state = fresh()
    submitted: list[tuple[Identity, bytes]] = []
    for action, who, price, offset, pick in steps:
        user = USERS[who]
        height = state.height + 1
        if action == "submit":
            record = submit(
                nonce(state, user),
                max_price_per_gpu_hour=price,
                deadline_height=height + offset - 1,
                max_hours_milli=1_000,
                gpus=1,
                redundancy=1 + price % 5,
            )
            outcome = block(state, tx(user, record))
            if outcome.receipts:
                submitted.append((user, id_of(user, record.nonce)))
        elif action in ("cancel", "cancel_other") and submitted:
            owner, job = submitted[pick % len(submitted)]
            sender = owner if action == "cancel" else USERS[(USERS.index(owner) + 1) % 3]
            block(state, tx(sender, cancel(nonce(state, sender), job)))
        elif action == "expire":
            expire_jobs(state, state.height)
            state.check_conservation()
        else:
            block(state)
        book = jobs.jobs_of(state)
        pending = {j: r.escrowed for j, r in book.items() if r.pending}
        assert {j: e.amount for j, e in state.escrows.items()} == pending
        for r in book.values():
            assert r.escrowed == r.terms.max_cost


def test_a_deadline_too_far_away_is_refused() -> None:
    state = fresh()
    far = state.params.market.deadline_blocks_max + 2
    reason = refused(state, tx(ALICE, submit(0, deadline_height=far)), TxCode.BAD_JOB)
    assert "blocks away" in reason
