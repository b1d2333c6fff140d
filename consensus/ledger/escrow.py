"""Job escrow hooks, for the market: lock a job's maximum cost, then release it to the workers
(and a protocol fee) or refund it.

These are plain functions on the state, not transactions: the market's own transactions call
them while being applied, inside a block. Each validates everything before changing anything,
and misuse (an unknown or reused job id, paying out more than was locked) raises
`InvalidTransaction`. Job ids are live only while locked: after release or refund the id may be
locked again; refusing reuse across a job's history is the market's rule to keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.state import PROTOCOL_ACCOUNT, Escrow, LedgerState

JOB_ID_BYTES = 32
ACCOUNT_BYTES = 32
PAYOUTS_MAX = 256


@dataclass(frozen=True)
class EscrowSettlement:
    job_id: bytes
    paid: int
    fee: int
    refunded: int


def _check_id(job_id: bytes) -> None:
    if len(job_id) != JOB_ID_BYTES:
        raise InvalidTransaction(TxCode.MALFORMED, f"job id must be {JOB_ID_BYTES} bytes")


def _held(state: LedgerState, job_id: bytes) -> Escrow:
    _check_id(job_id)
    escrow = state.escrows.get(job_id)
    if escrow is None:
        raise InvalidTransaction(TxCode.UNKNOWN_ESCROW, f"no escrow for job {job_id.hex()}")
    return escrow


def escrow_lock(state: LedgerState, job_id: bytes, payer: bytes, amount: int) -> None:
    """Move `amount` from `payer`'s balance into the job's escrow."""
    _check_id(job_id)
    if job_id in state.escrows:
        raise InvalidTransaction(TxCode.ESCROW_EXISTS, f"job {job_id.hex()} is already escrowed")
    if amount <= 0:
        raise InvalidTransaction(TxCode.BELOW_MINIMUM, "an escrow must hold at least 1")
    if state.balance(payer) < amount:
        raise InvalidTransaction(
            TxCode.INSUFFICIENT_FUNDS, f"escrow of {amount} with {state.balance(payer)} available"
        )
    state.debit(payer, amount)
    state.escrows[job_id] = Escrow(payer, amount)


def escrow_release(
    state: LedgerState, job_id: bytes, payouts: Sequence[tuple[bytes, int]], fee: int
) -> EscrowSettlement:
    """Pay each (account, amount), `fee` to the protocol account, and refund what is left to
    the payer. Refused (nothing changes) if the total exceeds what was locked."""
    escrow = _held(state, job_id)
    if len(payouts) > PAYOUTS_MAX:
        raise InvalidTransaction(TxCode.TOO_LARGE, f"{len(payouts)} payouts > {PAYOUTS_MAX}")
    for account, amount in payouts:
        if len(account) != ACCOUNT_BYTES or amount < 0:
            raise InvalidTransaction(TxCode.MALFORMED, f"bad payout ({account.hex()}, {amount})")
    if fee < 0:
        raise InvalidTransaction(TxCode.MALFORMED, f"negative fee {fee}")
    paid = sum(amount for _, amount in payouts)
    if paid + fee > escrow.amount:
        raise InvalidTransaction(
            TxCode.ESCROW_OVERDRAWN, f"paying {paid} + fee {fee} from an escrow of {escrow.amount}"
        )
    del state.escrows[job_id]
    for account, amount in payouts:
        state.credit(account, amount)
    state.credit(PROTOCOL_ACCOUNT, fee)
    state.fees_collected += fee
    refund = escrow.amount - paid - fee
    state.credit(escrow.payer, refund)
    return EscrowSettlement(job_id, paid, fee, refund)


def escrow_refund(state: LedgerState, job_id: bytes) -> EscrowSettlement:
    """Return the whole escrow to the payer (the job was cancelled or never ran)."""
    escrow = _held(state, job_id)
    del state.escrows[job_id]
    state.credit(escrow.payer, escrow.amount)
    return EscrowSettlement(job_id, 0, 0, escrow.amount)
