"""The mempool: admission (each refusal with its code, the state of the pool unchanged),
batching (per-sender consecutive nonces, the block's limits) and clean-up after a commit."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.bft.mempool import Mempool
from consensus.ledger.apply import BlockContext, apply_block
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.tx import Transfer
from tests.consensus.conftest import (
    CHAIN_ID,
    make_genesis,
    make_params,
    members,
    signed_tx,
    transfer,
    users,
)

OPS = members(4)
U = users(6)
SINK = OPS[0].public_key
PARAMS = make_params(min_fee=2, txs_per_account_per_block_max=5, tx_bytes_max=512)


@pytest.fixture
def state():
    return make_genesis(OPS, U, params=PARAMS).initial_state()


def tx(i: int, nonce: int, fee: int = 2, amount: int = 1) -> bytes:
    return transfer(U[i], nonce, SINK, amount=amount, fee=fee)


def refused(pool: Mempool, data: bytes, state) -> TxCode:
    before = (len(pool), pool.pending())
    with pytest.raises(InvalidTransaction) as info:
        pool.admit(data, state)
    assert (len(pool), pool.pending()) == before
    return info.value.code


def commit(state, txs, height=None) -> None:
    outcome = apply_block(state, list(txs), BlockContext(height or state.height + 1))
    assert outcome.rejected == ()


# -- admission ------------------------------------------------------------------------------


def test_admit_returns_the_verified_tx_and_counts_it(state) -> None:
    pool = Mempool(CHAIN_ID)
    t = pool.admit(tx(0, 0), state)
    assert t.signer == U[0].public_key and t.record.nonce == 0
    assert len(pool) == 1 and pool.admitted == 1
    assert pool.pending() == [tx(0, 0)]


def test_admit_refuses_a_bad_signature(state) -> None:
    data = bytearray(tx(0, 0))
    data[-3] ^= 0x10  # inside the signature
    pool = Mempool(CHAIN_ID)
    assert refused(pool, bytes(data), state) == TxCode.BAD_SIGNATURE
    assert pool.refused == {"bad_signature": 1}


def test_admit_refuses_another_chain(state) -> None:
    pool = Mempool(CHAIN_ID)
    other = transfer(U[0], 0, SINK, fee=2, chain_id=b"other-chain")
    assert refused(pool, other, state) == TxCode.MALFORMED


def test_admit_refuses_garbage_and_oversized(state) -> None:
    pool = Mempool(CHAIN_ID)
    assert refused(pool, b"\x93\x01\x02", state) == TxCode.MALFORMED
    assert refused(pool, b"\x00" * (PARAMS.tx_bytes_max + 1), state) == TxCode.TOO_LARGE


def test_admit_refuses_a_signed_record_that_is_not_a_transaction(state) -> None:
    from consensus.bft.votes import NIL, Vote, VoteKind
    from p2p.wire import sign

    pool = Mempool(CHAIN_ID)
    v = sign(Vote(1, 0, VoteKind.PREVOTE, NIL), U[0], CHAIN_ID).encode()
    assert refused(pool, v, state) == TxCode.MALFORMED


def test_admit_refuses_a_fee_below_the_minimum(state) -> None:
    pool = Mempool(CHAIN_ID)
    assert refused(pool, tx(0, 0, fee=1), state) == TxCode.FEE_TOO_LOW
    pool.admit(tx(0, 0, fee=2), state)


def test_admit_refuses_a_used_nonce(state) -> None:
    commit(state, [tx(0, 0), tx(0, 1)])
    pool = Mempool(CHAIN_ID)
    assert refused(pool, tx(0, 1, amount=9), state) == TxCode.BAD_NONCE
    pool.admit(tx(0, 2), state)


def test_admit_refuses_a_nonce_too_far_ahead(state) -> None:
    pool = Mempool(CHAIN_ID, nonce_window=4)
    assert refused(pool, tx(0, 4), state) == TxCode.BAD_NONCE
    pool.admit(tx(0, 3), state)  # the window's last nonce


def test_admit_refuses_a_duplicate(state) -> None:
    pool = Mempool(CHAIN_ID)
    pool.admit(tx(0, 0), state)
    assert refused(pool, tx(0, 0), state) == TxCode.ALREADY_PENDING


def test_admit_refuses_a_second_tx_for_one_sender_and_nonce(state) -> None:
    pool = Mempool(CHAIN_ID)
    pool.admit(tx(0, 0, amount=1), state)
    assert refused(pool, tx(0, 0, amount=2), state) == TxCode.ALREADY_PENDING
    assert refused(pool, tx(0, 0, amount=1, fee=50), state) == TxCode.ALREADY_PENDING
    pool.admit(tx(1, 0), state)  # another sender's nonce 0 is another slot


def test_admit_refuses_when_full(state) -> None:
    pool = Mempool(CHAIN_ID, capacity=3)
    for i in range(3):
        pool.admit(tx(i, 0), state)
    assert refused(pool, tx(3, 0), state) == TxCode.MEMPOOL_FULL
    assert pool.refused == {"mempool_full": 1}


def test_verify_remembers_what_it_verified(state) -> None:
    pool = Mempool(CHAIN_ID)
    data = tx(0, 0)
    first = pool.verify(data, state)
    assert pool.verify(data, state) is first
    assert pool.decoder(state)(data) is first


# -- batching ------------------------------------------------------------------------------


def senders_nonces(batch) -> list[tuple[bytes, int]]:
    from consensus.ledger.tx import decode_tx

    out = []
    for data in batch:
        t = decode_tx(data, chain_id=CHAIN_ID, tx_bytes_max=PARAMS.tx_bytes_max)
        out.append((t.signer, t.record.nonce))
    return out


def test_batch_orders_each_senders_nonces_whatever_the_arrival_order(state) -> None:
    pool = Mempool(CHAIN_ID)
    for data in (tx(0, 2), tx(1, 0), tx(0, 1), tx(0, 0), tx(1, 1)):
        pool.admit(data, state)
    batch = pool.batch(state, 100, 10**6)
    got = senders_nonces(batch)
    assert sorted(got) == sorted(
        [(U[0].public_key, n) for n in range(3)] + [(U[1].public_key, n) for n in range(2)]
    )
    for who in (U[0].public_key, U[1].public_key):
        assert [n for s, n in got if s == who] == sorted(n for s, n in got if s == who)
    # and the batch applies cleanly: nothing rejected
    commit(state, batch)


def test_batch_stops_at_a_nonce_gap(state) -> None:
    pool = Mempool(CHAIN_ID)
    for data in (tx(0, 0), tx(0, 2), tx(0, 3)):
        pool.admit(data, state)
    assert senders_nonces(pool.batch(state, 100, 10**6)) == [(U[0].public_key, 0)]


def test_batch_starts_at_the_senders_next_nonce(state) -> None:
    pool = Mempool(CHAIN_ID)
    pool.admit(tx(0, 1), state)
    assert pool.batch(state, 100, 10**6) == ()


def test_batch_respects_txs_max(state) -> None:
    pool = Mempool(CHAIN_ID)
    for i in range(4):
        for n in range(3):
            pool.admit(tx(i, n), state)
    batch = pool.batch(state, 7, 10**6)
    assert len(batch) == 7
    got = senders_nonces(batch)
    for who in {s for s, _ in got}:
        ns = [n for s, n in got if s == who]
        assert ns == list(range(len(ns)))


def test_batch_respects_bytes_max(state) -> None:
    pool = Mempool(CHAIN_ID)
    datas = [tx(i, 0) for i in range(5)]
    for d in datas:
        pool.admit(d, state)
    per = len(datas[0]) + 8
    assert all(len(d) == len(datas[0]) for d in datas)
    batch = pool.batch(state, 100, 3 * per)
    assert len(batch) == 3
    assert pool.batch(state, 100, 3 * per - 1) == tuple(datas[:2])
    assert pool.batch(state, 100, per - 1) == ()


def test_batch_respects_txs_per_account_per_block_max(state) -> None:
    pool = Mempool(CHAIN_ID)
    for n in range(8):
        pool.admit(tx(0, n), state)
    pool.admit(tx(1, 0), state)
    got = senders_nonces(pool.batch(state, 100, 10**6))
    mine = [n for s, n in got if s == U[0].public_key]
    assert mine == list(range(PARAMS.txs_per_account_per_block_max))
    assert (U[1].public_key, 0) in got


def test_batch_does_not_change_the_pool(state) -> None:
    pool = Mempool(CHAIN_ID)
    for n in (1, 0):
        pool.admit(tx(0, n), state)
    before = pool.pending()
    pool.batch(state, 100, 10**6)
    assert pool.pending() == before and len(pool) == 2


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.data())
def test_batch_is_always_applicable(data) -> None:
    """Whatever the arrival order and limits, a batch applies without a single rejection,
    and when no limit binds it takes everything the per-sender cap allows."""
    state = make_genesis(OPS, U, params=PARAMS).initial_state()
    counts = [data.draw(st.integers(0, 7), label=f"txs of sender {i}") for i in range(3)]
    txs = [tx(i, n) for i in range(3) for n in range(counts[i])]
    pool = Mempool(CHAIN_ID)
    for t in data.draw(st.permutations(txs), label="arrival order"):
        pool.admit(t, state)
    txs_max = data.draw(st.integers(1, 30), label="txs_max")
    batch = pool.batch(state, txs_max, 10**6)
    per = PARAMS.txs_per_account_per_block_max
    assert len(batch) == min(txs_max, sum(min(per, c) for c in counts))
    outcome = apply_block(state, list(batch), BlockContext(1))
    assert outcome.rejected == ()


# -- after a commit -------------------------------------------------------------------------


def test_remove_committed_drops_included_and_stale(state) -> None:
    pool = Mempool(CHAIN_ID)
    a0, a1, a2 = tx(0, 0), tx(0, 1), tx(0, 2)
    b0 = tx(1, 0)
    for d in (a0, a1, a2, b0):
        pool.admit(d, state)
    # another node's block carried a different nonce-1 tx of the same sender
    a1_other = tx(0, 1, amount=7)
    commit(state, [a0, a1_other])
    pool.remove_committed([a0, a1_other], state)
    assert pool.pending() == [a2, b0]
    # the freed slots admit again; the stale one stays refused by nonce
    assert refused(pool, a1, state) == TxCode.BAD_NONCE
    pool.admit(tx(0, 3), state)
    assert len(pool) == 3


def test_remove_committed_frees_the_slot_of_an_included_but_rejected_tx(state) -> None:
    pool = Mempool(CHAIN_ID)
    poor = transfer(U[0], 0, SINK, amount=10**15, fee=2)  # more than its balance
    pool.admit(poor, state)
    outcome = apply_block(state, [poor], BlockContext(1))
    assert [r.code for r in outcome.rejected] == [TxCode.INSUFFICIENT_FUNDS]
    pool.remove_committed([poor], state)
    assert len(pool) == 0
    pool.admit(tx(0, 0), state)  # nonce 0 is still the next one, and free again


def test_committed_transactions_leave_the_verified_memory(state) -> None:
    """What is committed is applied: its verified form is dropped with it (the collector
    walks every object kept), while what is still pending stays verified."""
    pool = Mempool(CHAIN_ID)
    a0, a1 = tx(0, 0), tx(0, 1)
    pool.admit(a0, state)
    pool.admit(a1, state)
    assert pool.verify(a0, state) is pool.verify(a0, state)  # remembered
    commit(state, [a0])
    pool.remove_committed([a0], state)
    assert a0 not in pool._verified and a1 in pool._verified
    assert refused(pool, a0, state) == TxCode.BAD_NONCE  # verified again, then refused


def test_remove_committed_ignores_unknown_txs(state) -> None:
    pool = Mempool(CHAIN_ID)
    pool.admit(tx(0, 0), state)
    pool.remove_committed([b"never seen", tx(2, 0)], state)
    assert len(pool) == 1


def test_admitted_equivocation_and_stake_kinds_are_batched_too(state) -> None:
    from consensus.ledger.tx import Delegate

    pool = Mempool(CHAIN_ID)
    d = signed_tx(Delegate(nonce=0, fee=2, operator=OPS[1].public_key, amount=5_000), U[0])
    t = signed_tx(Transfer(nonce=1, fee=2, to=SINK, amount=3), U[0])
    pool.admit(t, state)
    pool.admit(d, state)
    assert pool.batch(state, 10, 10**6) == (d, t)
    assert hashlib.sha256(d).digest() != hashlib.sha256(t).digest()
