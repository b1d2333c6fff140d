"""The ledger, one rule at a time: every transaction kind, every rejection code (each leaving
the state root unchanged), escrow hooks, slashing passed through to delegators in exact
integers, the emission schedule, epoch processing and the state's canonical encoding."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.ledger import (
    PROTOCOL_ACCOUNT,
    BlockContext,
    BlockTally,
    ConservationError,
    Delegate,
    EmissionParams,
    Genesis,
    GenesisOperator,
    InvalidTransaction,
    LedgerParams,
    LedgerState,
    Receipt,
    Stake,
    Transfer,
    TxCode,
    Unbond,
    Undelegate,
    apply_block,
    apply_tx,
    check_tx,
    decode_state,
    decode_tx,
    emission_for_epoch,
    escrow_lock,
    escrow_refund,
    escrow_release,
    register_tx_handler,
    slash,
)
from consensus.ledger.rewards import capped_emission
from consensus.ledger.staking import shares_for_deposit, shares_for_withdrawal
from p2p.announcements import CapacityAnnouncement
from p2p.errors import DecodeError
from p2p.identity import Identity
from p2p.wire import Record, Signed, sign

CHAIN = "gpumesh-test"
CHAIN_ID = CHAIN.encode()
OP, OP2, ALICE, BOB, CAROL = (Identity.derive("test-ledger", n) for n in range(5))
PARAMS = LedgerParams(
    epoch_blocks=5,
    unbonding_epochs=2,
    unbonding_entries_max=3,
    min_stake=1_000,
    min_delegation=10,
    min_fee=2,
    commission_step_max_bps=100,
    jail_epochs=2,
    committee_size=4,
    txs_per_account_per_block_max=3,
    tx_bytes_max=512,
    emission=EmissionParams(initial_per_epoch=10_000, halving_epochs=4),
)
JOB = hashlib.sha256(b"job-1").digest()


def evidence(n: int) -> bytes:
    return hashlib.sha256(b"evidence/%d" % n).digest()


def genesis(params: LedgerParams = PARAMS, *, op2: bool = False) -> Genesis:
    allocations = tuple(sorted((i.public_key, 100_000) for i in (OP, OP2, ALICE, BOB, CAROL)))
    operators = [GenesisOperator(OP.public_key, 10_000, 1_000)]
    if op2:
        operators.append(GenesisOperator(OP2.public_key, 30_000, 0))
    return Genesis(CHAIN, allocations, tuple(sorted(operators, key=lambda o: o.account)), params)


def fresh(params: LedgerParams = PARAMS, *, op2: bool = False) -> LedgerState:
    return genesis(params, op2=op2).initial_state()


def signed(ident: Identity, record: Record) -> Signed[Any]:
    return sign(record, ident, CHAIN_ID)


def ctx(state: LedgerState, **kw: Any) -> BlockContext:
    return BlockContext(height=state.height + 1, **kw)


def do(state: LedgerState, ident: Identity, record: Record) -> Receipt:
    receipt = apply_tx(state, signed(ident, record), ctx(state))
    state.check_conservation()
    return receipt


def refused(state: LedgerState, ident: Identity, record: Record, code: TxCode) -> str:
    root = state.state_root()
    with pytest.raises(InvalidTransaction) as info:
        apply_tx(state, signed(ident, record), ctx(state))
    assert info.value.code is code, info.value
    assert state.state_root() == root
    return info.value.reason


def nonce(state: LedgerState, ident: Identity) -> int:
    return state.nonce(ident.public_key)


def block(state: LedgerState, *txs: bytes, **kw: Any) -> Any:
    return apply_block(state, list(txs), ctx(state, **kw))


def finish_epoch(state: LedgerState, **kw: Any) -> Any:
    """Empty blocks up to and including the one that closes the current epoch."""
    epoch = state.epoch
    while True:
        outcome = block(state, **kw)
        if state.epoch != epoch:
            return outcome.epoch


# ---------------------------------------------------------------------------------------------
# Transfers, nonces, fees, limits


def test_transfer_moves_value_and_pays_the_fee_to_the_protocol() -> None:
    state = fresh()
    receipt = do(state, ALICE, Transfer(nonce=0, fee=5, to=BOB.public_key, amount=1_000))
    assert state.balance(ALICE.public_key) == 100_000 - 1_005
    assert state.balance(BOB.public_key) == 101_000
    assert state.balance(PROTOCOL_ACCOUNT) == 5 and state.fees_collected == 5
    assert nonce(state, ALICE) == 1
    assert (receipt.sender, receipt.kind, receipt.nonce, receipt.fee) == (
        ALICE.public_key,
        "Transfer",
        0,
        5,
    )


def test_a_transfer_to_a_new_account_creates_it() -> None:
    state = fresh()
    stranger = Identity.derive("test-ledger", "stranger").public_key
    do(state, ALICE, Transfer(nonce=0, fee=2, to=stranger, amount=7))
    assert state.balance(stranger) == 7 and state.nonce(stranger) == 0


def test_replays_and_gaps_are_bad_nonces() -> None:
    state = fresh()
    tx = Transfer(nonce=0, fee=2, to=BOB.public_key, amount=1)
    do(state, ALICE, tx)
    assert "expected nonce 1, got 0" in refused(state, ALICE, tx, TxCode.BAD_NONCE)
    refused(state, ALICE, replace(tx, nonce=2), TxCode.BAD_NONCE)
    do(state, ALICE, replace(tx, nonce=1))


def test_fee_below_minimum() -> None:
    refused(
        fresh(), ALICE, Transfer(nonce=0, fee=1, to=BOB.public_key, amount=1), TxCode.FEE_TOO_LOW
    )


def test_insufficient_funds_counts_the_fee() -> None:
    state = fresh()
    refused(
        state,
        ALICE,
        Transfer(nonce=0, fee=2, to=BOB.public_key, amount=99_999),
        TxCode.INSUFFICIENT_FUNDS,
    )
    do(state, ALICE, Transfer(nonce=0, fee=2, to=BOB.public_key, amount=99_998))
    assert state.balance(ALICE.public_key) == 0 and nonce(state, ALICE) == 1
    refused(
        state,
        ALICE,
        Transfer(nonce=1, fee=2, to=BOB.public_key, amount=1),
        TxCode.INSUFFICIENT_FUNDS,
    )
    nobody = Identity.derive("test-ledger", "nobody")
    refused(
        state,
        nobody,
        Transfer(nonce=0, fee=2, to=BOB.public_key, amount=1),
        TxCode.INSUFFICIENT_FUNDS,
    )


def test_zero_transfer_is_below_minimum() -> None:
    refused(
        fresh(), ALICE, Transfer(nonce=0, fee=2, to=BOB.public_key, amount=0), TxCode.BELOW_MINIMUM
    )


def test_rate_limit_per_sender_per_block() -> None:
    state = fresh()
    txs = [
        signed(ALICE, Transfer(nonce=n, fee=2, to=BOB.public_key, amount=1)).encode()
        for n in range(4)
    ]
    bob = signed(BOB, Transfer(nonce=0, fee=2, to=ALICE.public_key, amount=1)).encode()
    outcome = block(state, *txs, bob)
    assert len(outcome.receipts) == 4
    assert [(r.index, r.code) for r in outcome.rejected] == [(3, TxCode.RATE_LIMITED)]
    assert outcome.rejected[0].tx_id == hashlib.sha256(txs[3]).digest()
    assert nonce(state, ALICE) == 3
    assert len(block(state, txs[3]).receipts) == 1  # the next block takes it


def test_the_tally_is_what_limits_apply_tx() -> None:
    state = fresh()
    tally = BlockTally()
    for n in range(3):
        apply_tx(
            state,
            signed(ALICE, Transfer(nonce=n, fee=2, to=BOB.public_key, amount=1)),
            ctx(state),
            tally,
        )
    with pytest.raises(InvalidTransaction) as info:
        apply_tx(
            state,
            signed(ALICE, Transfer(nonce=3, fee=2, to=BOB.public_key, amount=1)),
            ctx(state),
            tally,
        )
    assert info.value.code is TxCode.RATE_LIMITED


def test_malformed_bad_signature_too_large_and_foreign_records() -> None:
    state = fresh()
    good = signed(ALICE, Transfer(nonce=0, fee=2, to=BOB.public_key, amount=1)).encode()
    forged = good[:-1] + bytes([good[-1] ^ 1])
    other_chain = sign(
        Transfer(nonce=0, fee=2, to=BOB.public_key, amount=1), ALICE, b"elsewhere"
    ).encode()
    announcement = sign(
        CapacityAnnouncement(
            node_id=ALICE.public_key,
            seq=1,
            issued_ms=1,
            expires_ms=2,
            region="x",
            gpus=(),
            price_per_gpu_hour=1,
            free_gpus=0,
            load_permille=0,
            gpu_source="declared",
            addrs=(),
        ),
        ALICE,
        CHAIN_ID,
    ).encode()
    root = state.state_root()
    outcome = block(state, b"\x93\x01", forged, b"\x00" * 600, other_chain, announcement, good)
    assert [r.code for r in outcome.rejected] == [
        TxCode.MALFORMED,
        TxCode.BAD_SIGNATURE,
        TxCode.TOO_LARGE,
        TxCode.MALFORMED,
        TxCode.MALFORMED,
    ]
    assert "not a ledger transaction" in outcome.rejected[4].reason
    assert len(outcome.receipts) == 1
    assert root != state.state_root()
    with pytest.raises(InvalidTransaction) as info:
        decode_tx(good, chain_id=CHAIN_ID, tx_bytes_max=len(good) - 1)
    assert info.value.code is TxCode.TOO_LARGE


def test_apply_tx_checks_chain_and_size_of_a_decoded_envelope() -> None:
    state = fresh(replace(PARAMS, tx_bytes_max=256))
    foreign = sign(Transfer(nonce=0, fee=2, to=BOB.public_key, amount=1), ALICE, b"elsewhere")
    with pytest.raises(InvalidTransaction) as info:
        apply_tx(state, foreign, ctx(state))
    assert info.value.code is TxCode.MALFORMED
    tx = signed(ALICE, Transfer(nonce=0, fee=2, to=BOB.public_key, amount=1))
    assert len(tx.encode()) < 256
    state.params = replace(PARAMS, tx_bytes_max=256)
    object.__setattr__(state.params, "tx_bytes_max", 100)  # below the legal floor, to test
    with pytest.raises(InvalidTransaction) as info:
        apply_tx(state, tx, ctx(state))
    assert info.value.code is TxCode.TOO_LARGE


def test_check_tx_changes_nothing() -> None:
    state = fresh()
    root = state.state_root()
    check_tx(
        state, signed(ALICE, Transfer(nonce=0, fee=2, to=BOB.public_key, amount=1)), ctx(state)
    )
    assert state.state_root() == root
    with pytest.raises(InvalidTransaction):
        check_tx(
            state, signed(ALICE, Transfer(nonce=5, fee=2, to=BOB.public_key, amount=1)), ctx(state)
        )


# ---------------------------------------------------------------------------------------------
# Stake and Unbond


def test_stake_registers_an_operator_with_its_commission() -> None:
    state = fresh()
    do(state, ALICE, Stake(nonce=0, fee=2, amount=2_000, commission_bps=700))
    op = state.operators[ALICE.public_key]
    assert (op.pool, op.shares, op.commission_bps) == (2_000, 2_000, 700)
    assert state.self_stake(ALICE.public_key) == 2_000
    assert state.is_active(ALICE.public_key)
    assert state.balance(ALICE.public_key) == 100_000 - 2_002
    assert ALICE.public_key in state.bonded_stakes()


def test_stake_rules() -> None:
    state = fresh()
    refused(state, ALICE, Stake(nonce=0, fee=2, amount=999, commission_bps=0), TxCode.BELOW_MINIMUM)
    refused(
        state,
        ALICE,
        Stake(nonce=0, fee=2, amount=100_000, commission_bps=0),
        TxCode.INSUFFICIENT_FUNDS,
    )
    do(state, ALICE, Stake(nonce=0, fee=2, amount=1_000, commission_bps=500))
    do(state, ALICE, Stake(nonce=1, fee=2, amount=0, commission_bps=500))  # no-op top-up
    # the commission may not change in the epoch it was set, nor by more than the step
    refused(
        state, ALICE, Stake(nonce=2, fee=2, amount=10, commission_bps=550), TxCode.COMMISSION_CHANGE
    )
    finish_epoch(state)
    assert "exceeds the step" in refused(
        state, ALICE, Stake(nonce=2, fee=2, amount=0, commission_bps=601), TxCode.COMMISSION_CHANGE
    )
    before = state.self_stake(ALICE.public_key)  # the epoch's rewards compounded into it
    do(state, ALICE, Stake(nonce=2, fee=2, amount=500, commission_bps=400))
    assert state.operators[ALICE.public_key].commission_bps == 400
    assert before + 499 <= state.self_stake(ALICE.public_key) <= before + 500
    refused(
        state, ALICE, Stake(nonce=3, fee=2, amount=0, commission_bps=350), TxCode.COMMISSION_CHANGE
    )


def test_unbond_queues_and_releases_after_the_unbonding_period() -> None:
    state = fresh()
    do(state, OP, Unbond(nonce=0, fee=2, amount=4_000))
    assert state.self_stake(OP.public_key) == 6_000
    assert [(e.amount, e.release_epoch) for e in state.unbonding] == [(4_000, 2)]
    balance = state.balance(OP.public_key)
    outcomes = [finish_epoch(state) for _ in range(3)]  # ends epochs 0, 1 and 2
    assert [o.released for o in outcomes] == [0, 0, 4_000]
    commission = sum(s.commission for o in outcomes for s in o.rewards.shares)
    assert state.balance(OP.public_key) == balance + 4_000 + commission
    assert state.unbonding == []


def test_unbond_rules() -> None:
    state = fresh()
    refused(state, ALICE, Unbond(nonce=0, fee=2, amount=1), TxCode.UNKNOWN_OPERATOR)
    refused(state, OP, Unbond(nonce=0, fee=2, amount=10_001), TxCode.INSUFFICIENT_STAKE)
    refused(state, OP, Unbond(nonce=0, fee=2, amount=0), TxCode.BELOW_MINIMUM)
    assert "unbond all or less" in refused(
        state, OP, Unbond(nonce=0, fee=2, amount=9_500), TxCode.BELOW_MINIMUM
    )
    for n in range(3):
        do(state, OP, Unbond(nonce=n, fee=2, amount=100))
    refused(state, OP, Unbond(nonce=3, fee=2, amount=100), TxCode.TOO_MANY_UNBONDING)


def test_full_unbond_deactivates_the_operator_and_it_may_return() -> None:
    state = fresh()
    do(state, OP, Unbond(nonce=0, fee=2, amount=10_000))
    op = state.operators[OP.public_key]
    assert (op.pool, op.shares) == (0, 0)
    assert not state.is_active(OP.public_key)
    assert state.bonded_stakes() == {}
    # no holders left: it registers afresh, commission free again
    do(state, OP, Stake(nonce=1, fee=2, amount=1_000, commission_bps=9_000))
    assert state.operators[OP.public_key].commission_bps == 9_000


# ---------------------------------------------------------------------------------------------
# Delegate and Undelegate


def test_delegation_buys_shares_at_the_pool_rate() -> None:
    state = fresh()
    do(state, ALICE, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=5_000))
    assert state.shares_of(ALICE.public_key, OP.public_key) == 5_000
    assert state.operators[OP.public_key].pool == 15_000
    assert state.stake_value(ALICE.public_key, OP.public_key) == 5_000
    slash(state, OP.public_key, 2_000, "test", evidence(1), jail=False)  # pool 12_000
    do(state, BOB, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=1_000))
    # 1000 tokens at 15_000 shares / 12_000 tokens = 1250 shares, worth exactly 1000
    assert state.shares_of(BOB.public_key, OP.public_key) == 1_250
    assert state.stake_value(BOB.public_key, OP.public_key) == 1_000


def test_delegate_rules() -> None:
    state = fresh()
    refused(
        state,
        OP,
        Delegate(nonce=0, fee=2, operator=OP.public_key, amount=100),
        TxCode.SELF_DELEGATION,
    )
    refused(
        state,
        ALICE,
        Delegate(nonce=0, fee=2, operator=BOB.public_key, amount=100),
        TxCode.UNKNOWN_OPERATOR,
    )
    refused(
        state,
        ALICE,
        Delegate(nonce=0, fee=2, operator=OP.public_key, amount=9),
        TxCode.BELOW_MINIMUM,
    )
    refused(
        state,
        ALICE,
        Delegate(nonce=0, fee=2, operator=OP.public_key, amount=99_999),
        TxCode.INSUFFICIENT_FUNDS,
    )
    do(state, OP, Unbond(nonce=0, fee=2, amount=10_000))
    refused(
        state,
        ALICE,
        Delegate(nonce=0, fee=2, operator=OP.public_key, amount=100),
        TxCode.OPERATOR_INACTIVE,
    )
    jailed = fresh()
    slash(jailed, OP.public_key, 0, "downtime", evidence(2))
    refused(
        jailed,
        ALICE,
        Delegate(nonce=0, fee=2, operator=OP.public_key, amount=100),
        TxCode.OPERATOR_JAILED,
    )


def test_a_pool_slashed_to_nothing_takes_no_deposits() -> None:
    state = fresh()
    slash(state, OP.public_key, 10_000, "equivocation", evidence(3), jail=False)
    assert state.operators[OP.public_key].pool == 0
    assert state.burned == 10_000
    assert "slashed to nothing" in refused(
        state,
        OP,
        Stake(nonce=0, fee=2, amount=5_000, commission_bps=1_000),
        TxCode.OPERATOR_INACTIVE,
    )


def test_undelegate_partial_and_full() -> None:
    state = fresh()
    do(state, ALICE, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=3_000))
    slash(state, OP.public_key, 3_333, "fraud", evidence(4), jail=False)
    value = state.stake_value(ALICE.public_key, OP.public_key)
    assert value == 3_000 * 8_668 // 13_000 == 2_000  # pool 13_000 - 4_332 = 8_668
    do(state, ALICE, Undelegate(nonce=1, fee=2, operator=OP.public_key, amount=500))
    shares_left = state.shares_of(ALICE.public_key, OP.public_key)
    assert shares_left == 3_000 - 750  # ceil(500 * 13_000 / 8_668) = 750
    assert state.stake_value(ALICE.public_key, OP.public_key) == 1_500
    do(state, ALICE, Undelegate(nonce=2, fee=2, operator=OP.public_key, amount=1_500))
    assert (ALICE.public_key, OP.public_key) not in state.delegations
    assert [e.amount for e in state.unbonding] == [500, 1_500]


def test_undelegate_rules() -> None:
    state = fresh()
    refused(
        state,
        OP,
        Undelegate(nonce=0, fee=2, operator=OP.public_key, amount=1),
        TxCode.SELF_DELEGATION,
    )
    refused(
        state,
        ALICE,
        Undelegate(nonce=0, fee=2, operator=BOB.public_key, amount=1),
        TxCode.UNKNOWN_OPERATOR,
    )
    refused(
        state,
        ALICE,
        Undelegate(nonce=0, fee=2, operator=OP.public_key, amount=1),
        TxCode.INSUFFICIENT_STAKE,
    )


@settings(max_examples=200, deadline=None)
@given(
    pool=st.integers(1, 10**15),
    shares=st.integers(1, 10**15),
    held_frac=st.integers(0, 100),
    amount=st.integers(0, 10**15),
)
def test_share_rounding_always_favours_the_pool(
    pool: int, shares: int, held_frac: int, amount: int
) -> None:
    """Deposits and withdrawals never lower the price of a share for those who stay, and a
    depositor's new shares are never worth more than what was paid."""
    minted = shares_for_deposit(pool, shares, amount)
    assert amount * shares >= pool * minted  # new price (pool+a)/(S+m) >= old price pool/S
    assert minted * (pool + amount) // (shares + minted) <= amount
    held = shares * held_frac // 100
    value = held * pool // shares
    burned, paid = shares_for_withdrawal(pool, shares, held, min(amount, value))
    assert burned <= held and min(amount, value) <= paid <= value
    assert (pool - paid) * shares >= pool * (shares - burned)
    assert (burned == held) == (paid == value)


# ---------------------------------------------------------------------------------------------
# Slashing


def test_slashing_passes_through_to_delegators_exactly() -> None:
    state = fresh()
    do(state, ALICE, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=5_000))
    do(state, BOB, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=2_000))
    do(state, BOB, Undelegate(nonce=1, fee=2, operator=OP.public_key, amount=1_000))
    burned_before = state.burned
    event = slash(state, OP.public_key, 1_000, "double sign", evidence(5))
    # pool 16_000 -> burn 1_600; BOB's unbonding entry 1_000 -> burn 100
    assert (event.burned_bonded, event.burned_unbonding) == (1_600, 100)
    assert state.burned - burned_before == 1_700
    assert state.self_stake(OP.public_key) == 9_000
    assert state.stake_value(ALICE.public_key, OP.public_key) == 4_500
    assert state.stake_value(BOB.public_key, OP.public_key) == 900
    assert state.unbonding[0].amount == 900
    assert state.operators[OP.public_key].slashed_total == 1_700
    assert event.jailed_until_epoch == 0 + PARAMS.jail_epochs + 1
    assert state.is_jailed(OP.public_key) and not state.is_active(OP.public_key)
    state.check_conservation()


def test_slashing_with_remainders_burns_exactly_what_the_pool_lost() -> None:
    state = fresh()
    do(state, ALICE, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=3_331))
    do(state, BOB, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=17))
    before = state.expected_supply
    slash(state, OP.public_key, 777, "fraud", evidence(6))
    pool = state.operators[OP.public_key].pool
    assert pool == 13_348 - 13_348 * 777 // 10_000
    values = [state.stake_value(h, OP.public_key) for h, _ in state.holders(OP.public_key)]
    assert sum(values) <= pool and pool - sum(values) < len(values)
    assert state.expected_supply == before - 13_348 * 777 // 10_000
    state.check_conservation()


def test_slash_rules_and_jail_expiry() -> None:
    state = fresh()
    with pytest.raises(InvalidTransaction) as info:
        slash(state, ALICE.public_key, 100, "x", evidence(7))
    assert info.value.code is TxCode.UNKNOWN_OPERATOR
    with pytest.raises(InvalidTransaction) as info:
        slash(state, OP.public_key, 10_001, "x", evidence(7))
    assert info.value.code is TxCode.MALFORMED
    with pytest.raises(InvalidTransaction) as info:
        slash(state, OP.public_key, 1, "x", b"short")
    assert info.value.code is TxCode.MALFORMED
    slash(state, OP.public_key, 100, "x", evidence(7))
    root = state.state_root()
    with pytest.raises(InvalidTransaction) as info:
        slash(state, OP.public_key, 100, "x", evidence(7))
    assert info.value.code is TxCode.DUPLICATE_EVIDENCE
    assert state.state_root() == root
    for _ in range(3):
        assert state.is_jailed(OP.public_key)
        finish_epoch(state)
    assert not state.is_jailed(OP.public_key) and state.is_active(OP.public_key)


def test_slash_with_an_infraction_epoch_spares_older_unbonding() -> None:
    state = fresh()
    do(state, ALICE, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=2_000))
    do(state, ALICE, Undelegate(nonce=1, fee=2, operator=OP.public_key, amount=1_000))
    finish_epoch(state)
    do(state, ALICE, Undelegate(nonce=2, fee=2, operator=OP.public_key, amount=1_000))
    slash(state, OP.public_key, 5_000, "late evidence", evidence(8), infraction_epoch=1)
    assert [e.amount for e in state.unbonding] == [1_000, 500]


# ---------------------------------------------------------------------------------------------
# Escrow


def test_escrow_lock_release_pays_workers_fee_and_refunds_the_rest() -> None:
    state = fresh()
    escrow_lock(state, JOB, ALICE.public_key, 10_000)
    assert state.balance(ALICE.public_key) == 90_000
    assert state.totals().escrowed == 10_000
    state.check_conservation()
    result = escrow_release(state, JOB, [(OP.public_key, 6_000), (BOB.public_key, 1_000)], 300)
    assert (result.paid, result.fee, result.refunded) == (7_000, 300, 2_700)
    assert state.balance(OP.public_key) == 106_000
    assert state.balance(BOB.public_key) == 101_000
    assert state.balance(ALICE.public_key) == 92_700
    assert state.balance(PROTOCOL_ACCOUNT) == 300
    assert JOB not in state.escrows
    state.check_conservation()


def test_escrow_refund() -> None:
    state = fresh()
    escrow_lock(state, JOB, ALICE.public_key, 10_000)
    assert escrow_refund(state, JOB).refunded == 10_000
    assert state.balance(ALICE.public_key) == 100_000 and state.escrows == {}
    escrow_lock(state, JOB, ALICE.public_key, 1)  # the id is free again


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda s: escrow_lock(s, JOB, ALICE.public_key, 5), TxCode.ESCROW_EXISTS),
        (lambda s: escrow_lock(s, JOB[:5], ALICE.public_key, 5), TxCode.MALFORMED),
        (lambda s: escrow_lock(s, evidence(0), ALICE.public_key, 0), TxCode.BELOW_MINIMUM),
        (lambda s: escrow_lock(s, evidence(0), ALICE.public_key, 10**9), TxCode.INSUFFICIENT_FUNDS),
        (lambda s: escrow_release(s, JOB, [(BOB.public_key, 10_000)], 1), TxCode.ESCROW_OVERDRAWN),
        (lambda s: escrow_release(s, JOB, [(b"short", 1)], 0), TxCode.MALFORMED),
        (lambda s: escrow_release(s, JOB, [(BOB.public_key, -1)], 0), TxCode.MALFORMED),
        (lambda s: escrow_release(s, JOB, [], -1), TxCode.MALFORMED),
        (lambda s: escrow_release(s, JOB, [(BOB.public_key, 0)] * 257, 0), TxCode.TOO_LARGE),
        (lambda s: escrow_release(s, evidence(0), [], 0), TxCode.UNKNOWN_ESCROW),
        (lambda s: escrow_refund(s, evidence(0)), TxCode.UNKNOWN_ESCROW),
    ],
)
def test_escrow_misuse_is_refused_and_changes_nothing(call: Any, code: TxCode) -> None:
    state = fresh()
    escrow_lock(state, JOB, ALICE.public_key, 10_000)
    root = state.state_root()
    with pytest.raises(InvalidTransaction) as info:
        call(state)
    assert info.value.code is code
    assert state.state_root() == root


# ---------------------------------------------------------------------------------------------
# Emission and epochs


def test_emission_schedule_values() -> None:
    params = EmissionParams(initial_per_epoch=1_000, halving_epochs=4)
    assert [emission_for_epoch(e, params) for e in range(10)] == [
        1_000,
        875,
        750,
        625,
        500,
        438,
        375,
        313,
        250,
        219,
    ]
    halving = EmissionParams(initial_per_epoch=1_024, halving_epochs=1)
    values = [emission_for_epoch(e, halving) for e in range(12)]
    assert values == [1_024 >> e for e in range(11)] + [0]
    assert sum(values) == 2_047  # exactly 2 * 1024 - 1
    with pytest.raises(ValueError):
        emission_for_epoch(-1, params)


@settings(max_examples=100, deadline=None)
@given(initial=st.integers(0, 10**18), halving=st.integers(1, 50), epoch=st.integers(0, 5_000))
def test_emission_never_increases_and_sums_within_its_bound(
    initial: int, halving: int, epoch: int
) -> None:
    params = EmissionParams(initial_per_epoch=initial, halving_epochs=halving)
    assert emission_for_epoch(epoch + 1, params) <= emission_for_epoch(epoch, params)
    assert emission_for_epoch(epoch, params) <= initial
    zero_from = initial.bit_length() * halving
    assert emission_for_epoch(zero_from, params) == 0
    if zero_from <= 2_000:
        total = sum(emission_for_epoch(e, params) for e in range(zero_from))
        assert total <= params.emission_bound()


def test_max_supply_caps_minting() -> None:
    capped = replace(PARAMS, emission=EmissionParams(10_000, 4, max_supply=0))
    state = fresh(capped)
    cap = state.genesis_supply + 15_000
    state.params = replace(capped, emission=EmissionParams(10_000, 4, max_supply=cap))
    assert capped_emission(state) == 10_000
    assert finish_epoch(state).rewards.minted == 10_000
    assert finish_epoch(state).rewards.minted == 5_000
    assert finish_epoch(state).rewards.minted == 0
    assert state.genesis_supply + state.minted == cap


def test_epoch_rewards_commission_then_pool_compounding() -> None:
    state = fresh()
    do(state, ALICE, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=10_000))
    op_balance = state.balance(OP.public_key)
    outcome = finish_epoch(state)
    # one operator: the whole 10_000; commission 10% to its balance, 9_000 to the pool
    (share,) = outcome.rewards.shares
    assert (share.reward, share.commission) == (10_000, 1_000)
    assert state.balance(OP.public_key) == op_balance + 1_000
    assert state.operators[OP.public_key].pool == 29_000
    assert state.self_stake(OP.public_key) == 14_500
    assert state.stake_value(ALICE.public_key, OP.public_key) == 14_500
    assert state.minted == 10_000 and outcome.epoch == 0 and state.epoch == 1
    assert outcome.rewards.to_protocol == 0


def test_rewards_split_by_stake_and_uptime_with_remainder_to_protocol() -> None:
    state = fresh(op2=True)  # OP pool 10_000 (10%), OP2 pool 30_000 (0%)
    outcome = finish_epoch(state, uptime_permille={OP2.public_key: 500})
    # weights 10_000 * 1000 and 30_000 * 500: 2/5 and 3/5 of 10_000
    rewards = {s.operator: (s.reward, s.commission) for s in outcome.rewards.shares}
    assert rewards == {OP.public_key: (4_000, 400), OP2.public_key: (6_000, 0)}
    state = fresh(op2=True)
    outcome = finish_epoch(state, uptime_permille={OP.public_key: 333, OP2.public_key: 1000})
    total_w = 10_000 * 333 + 30_000 * 1000
    expected = [10_000 * 10_000 * 333 // total_w, 10_000 * 30_000 * 1000 // total_w]
    got = {s.operator: s.reward for s in outcome.rewards.shares}
    assert sorted(got.values()) == sorted(expected)
    assert outcome.rewards.to_protocol == 10_000 - sum(expected) > 0
    assert state.balance(PROTOCOL_ACCOUNT) == outcome.rewards.to_protocol


def test_jailed_or_absent_operators_earn_nothing_and_nothing_is_minted() -> None:
    state = fresh()
    slash(state, OP.public_key, 0, "offline", evidence(9))
    outcome = finish_epoch(state)
    assert outcome.rewards.minted == 0 and state.minted == 0
    state = fresh()
    assert finish_epoch(state, uptime_permille={OP.public_key: 0}).rewards.minted == 0


def test_epoch_end_rolls_the_committee_seed_from_committed_data() -> None:
    a, b = fresh(), fresh()
    seed = a.committee_seed
    finish_epoch(a, parent_hash=b"\x01" * 32)
    finish_epoch(b, parent_hash=b"\x02" * 32)
    assert a.committee_seed != seed and a.committee_seed != b.committee_seed
    assert a.next_committee().members == (OP.public_key,)


def test_block_heights_must_follow() -> None:
    state = fresh()
    with pytest.raises(ValueError):
        apply_block(state, [], BlockContext(height=2))
    with pytest.raises(ValueError):
        BlockContext(height=0)
    with pytest.raises(ValueError):
        BlockContext(height=1, uptime_permille={OP.public_key: 1001})
    with pytest.raises(ValueError):
        BlockContext(height=1, parent_hash=b"x")
    outcome = apply_block(state, [], BlockContext(height=1))
    assert outcome.state_root == state.state_root() and state.height == 1


# ---------------------------------------------------------------------------------------------
# The state itself


def test_conservation_error_names_the_figures() -> None:
    state = fresh()
    state.accounts[ALICE.public_key].balance += 1
    with pytest.raises(ConservationError, match="supply"):
        state.check_conservation()
    state = fresh()
    state.operators[OP.public_key].shares += 1
    with pytest.raises(ConservationError, match="shares"):
        state.check_conservation()
    state = fresh()
    with pytest.raises(ConservationError):
        state.debit(ALICE.public_key, 10**9)


def test_snapshot_round_trip_and_strictness() -> None:
    state = fresh(op2=True)
    do(state, ALICE, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=5_000))
    do(state, BOB, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=100))
    do(state, BOB, Undelegate(nonce=1, fee=2, operator=OP.public_key, amount=50))
    escrow_lock(state, JOB, CAROL.public_key, 77)
    slash(state, OP2.public_key, 10, "x", evidence(10))
    finish_epoch(state)
    data = state.encode()
    back = decode_state(data)
    assert back.state_root() == state.state_root()
    assert back == state
    tampered = bytearray(data)
    tampered[-40] ^= 0xFF
    with pytest.raises(DecodeError):
        decode_state(bytes(tampered) + b"\x00")


def test_clone_is_independent() -> None:
    state = fresh()
    copy = state.clone()
    do(copy, ALICE, Delegate(nonce=0, fee=2, operator=OP.public_key, amount=5_000))
    assert state.state_root() == fresh().state_root()
    assert copy.state_root() != state.state_root()


def test_a_tx_kind_gets_one_handler() -> None:
    with pytest.raises(ValueError):
        register_tx_handler(Transfer, lambda *args: lambda: None)


def test_a_block_s_receipts_are_ids_of_its_bytes_as_a_lone_tx_s_are() -> None:
    """apply_block hands each transaction's bytes to apply_tx (no re-encoding): the
    receipts' ids are the SHA-256 of those bytes, the same ids transactions applied alone
    get from their re-encoding, and the state comes out the same either way."""
    records = [(who, Transfer(nonce=0, fee=5, to=OP.public_key, amount=10 + n))
               for n, who in enumerate((ALICE, BOB, CAROL))]  # fmt: skip
    txs = [signed(who, record).encode() for who, record in records]
    in_block, alone = fresh(), fresh()
    outcome = block(in_block, *txs)
    assert not outcome.rejected
    assert [r.tx_id for r in outcome.receipts] == [hashlib.sha256(t).digest() for t in txs]
    lone = [apply_tx(alone, signed(who, record), ctx(alone)) for who, record in records]
    assert [r.tx_id for r in lone] == [r.tx_id for r in outcome.receipts]
    assert alone.balance(OP.public_key) == in_block.balance(OP.public_key)
