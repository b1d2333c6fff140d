"""Staking: the share arithmetic of operator pools, the four staking transactions, the
unbonding queue and slashing. (The pool scheme and its rounding are explained in state.py.)

Each transaction handler validates everything first and returns an `Effect`: a closure that
performs the change and cannot fail. `apply_tx` runs the effect only after every check of the
transaction passed, and `check_tx` (the mempool's question) simply drops it; so a refused
transaction can never leave half a change behind. (Handlers take the block's context `ctx`
like every handler in apply.TX_HANDLERS; staking needs nothing from it.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.params import BPS
from consensus.ledger.state import LedgerState, Operator, UnbondingEntry
from consensus.ledger.tx import Delegate, Stake, Unbond, Undelegate
from p2p.wire import U64_MAX

Effect = Callable[[], None]
SHARES_MAX = U64_MAX
"""Shares stay within the wire's integers; a pool slashed almost to nothing refuses deposits
that would mint more (its exchange rate is no longer useful)."""
EVIDENCE_DIGEST_BYTES = 32


def _refuse(code: TxCode, reason: str) -> InvalidTransaction:
    return InvalidTransaction(code, reason)


# ---------------------------------------------------------------------------------------------
# Share arithmetic


def shares_for_deposit(pool: int, shares: int, amount: int) -> int:
    """Shares minted for `amount` tokens: 1:1 into an empty pool, otherwise at the pool's
    rate rounded down (the depositor never gains at the other holders' expense)."""
    return amount if shares == 0 else amount * shares // pool


def shares_for_withdrawal(pool: int, shares: int, held: int, amount: int) -> tuple[int, int]:
    """(shares burned, tokens paid out) to take `amount` out of a holding of `held` shares.

    Shares are burned rounded up, so those who stay never lose. A withdrawal that burns the
    whole holding (asking for its full value, or so close that rounding up reaches it) pays
    the holding's full value: the holder leaves with everything it owned, and a pool whose
    last share leaves is left with exactly nothing, never with stranded dust."""
    value = held * pool // shares
    burned = held if amount == value else -(-amount * shares // pool)
    return (held, value) if burned >= held else (burned, amount)


def _value_after(held: int, pool: int, shares: int) -> int:
    return held * pool // shares if shares else 0


def _check_deposit(state: LedgerState, operator: bytes, amount: int) -> int:
    op = state.operators.get(operator)
    pool, shares = (op.pool, op.shares) if op else (0, 0)
    if shares > 0 and pool == 0:
        raise _refuse(TxCode.OPERATOR_INACTIVE, f"{operator.hex()}'s pool was slashed to nothing")
    minted = shares_for_deposit(pool, shares, amount)
    if minted == 0:
        raise _refuse(TxCode.BELOW_MINIMUM, f"{amount} buys no share of a pool of {pool}")
    if shares + minted > SHARES_MAX:
        raise _refuse(TxCode.OPERATOR_INACTIVE, f"{operator.hex()}'s pool cannot mint more shares")
    return minted


def _deposit(state: LedgerState, holder: bytes, operator: bytes, amount: int, minted: int) -> None:
    state.debit(holder, amount)
    op = state.operators[operator]
    op.pool += amount
    op.shares += minted
    key = (holder, operator)
    state.delegations[key] = state.delegations.get(key, 0) + minted


def _check_withdrawal(
    state: LedgerState, holder: bytes, operator: bytes, amount: int
) -> tuple[int, int]:
    if amount == 0:
        raise _refuse(TxCode.BELOW_MINIMUM, "amount must be at least 1")
    value = state.stake_value(holder, operator)
    if amount > value:
        raise _refuse(TxCode.INSUFFICIENT_STAKE, f"asked for {amount}, holding is worth {value}")
    pending = state.unbonding_count(holder)
    if pending >= state.params.unbonding_entries_max:
        raise _refuse(TxCode.TOO_MANY_UNBONDING, f"{pending} unbonding entries already pending")
    op = state.operators[operator]
    return shares_for_withdrawal(op.pool, op.shares, state.shares_of(holder, operator), amount)


def _withdraw(
    state: LedgerState, holder: bytes, operator: bytes, withdrawal: tuple[int, int]
) -> None:
    burned, amount = withdrawal
    op = state.operators[operator]
    op.pool -= amount
    op.shares -= burned
    key = (holder, operator)
    state.delegations[key] -= burned
    if state.delegations[key] == 0:
        del state.delegations[key]
    release = state.epoch + state.params.unbonding_epochs
    state.unbonding.append(UnbondingEntry(holder, operator, amount, release))


# ---------------------------------------------------------------------------------------------
# Transactions


def handle_stake(
    state: LedgerState, sender: bytes, tx: Stake, spendable: int, ctx: object
) -> Effect:
    params = state.params
    op = state.operators.get(sender)
    if tx.amount > spendable:
        raise _refuse(TxCode.INSUFFICIENT_FUNDS, f"staking {tx.amount} with {spendable} spendable")
    registering = op is None or op.shares == 0
    if registering and tx.amount < params.min_stake:
        raise _refuse(TxCode.BELOW_MINIMUM, f"first stake {tx.amount} < {params.min_stake}")
    changes = op is not None and not registering and tx.commission_bps != op.commission_bps
    if op is not None and changes:
        if abs(tx.commission_bps - op.commission_bps) > params.commission_step_max_bps:
            raise _refuse(
                TxCode.COMMISSION_CHANGE,
                f"{op.commission_bps} -> {tx.commission_bps} bps exceeds the step of "
                f"{params.commission_step_max_bps}",
            )
        if op.commission_epoch >= state.epoch:
            raise _refuse(TxCode.COMMISSION_CHANGE, "commission already set in this epoch")
    minted = _check_deposit(state, sender, tx.amount) if tx.amount else 0
    pool, shares = (op.pool, op.shares) if op else (0, 0)
    held = state.shares_of(sender, sender) + minted
    after = _value_after(held, pool + tx.amount, shares + minted)
    if after < params.min_stake:
        raise _refuse(TxCode.BELOW_MINIMUM, f"self-bond {after} < {params.min_stake}")

    def effect() -> None:
        current = state.operators.setdefault(sender, Operator())
        if registering or changes:
            current.commission_bps, current.commission_epoch = tx.commission_bps, state.epoch
        if minted:
            _deposit(state, sender, sender, tx.amount, minted)

    return effect


def handle_unbond(
    state: LedgerState, sender: bytes, tx: Unbond, spendable: int, ctx: object
) -> Effect:
    op = state.operators.get(sender)
    if op is None:
        raise _refuse(TxCode.UNKNOWN_OPERATOR, f"{sender.hex()} has never staked")
    withdrawal = _check_withdrawal(state, sender, sender, tx.amount)
    burned, paid = withdrawal
    held = state.shares_of(sender, sender) - burned
    left = _value_after(held, op.pool - paid, op.shares - burned)
    if 0 < left < state.params.min_stake:
        raise _refuse(
            TxCode.BELOW_MINIMUM,
            f"would leave a self-bond of {left} < {state.params.min_stake}: unbond all or less",
        )
    return lambda: _withdraw(state, sender, sender, withdrawal)


def handle_delegate(
    state: LedgerState, sender: bytes, tx: Delegate, spendable: int, ctx: object
) -> Effect:
    _check_other_operator(state, sender, tx.operator)
    if state.is_jailed(tx.operator):
        raise _refuse(TxCode.OPERATOR_JAILED, f"{tx.operator.hex()} is jailed")
    if state.self_stake(tx.operator) < state.params.min_stake:
        raise _refuse(TxCode.OPERATOR_INACTIVE, f"{tx.operator.hex()}'s self-bond is too low")
    if tx.amount < state.params.min_delegation:
        raise _refuse(TxCode.BELOW_MINIMUM, f"{tx.amount} < {state.params.min_delegation}")
    if tx.amount > spendable:
        raise _refuse(TxCode.INSUFFICIENT_FUNDS, f"delegating {tx.amount}, {spendable} spendable")
    minted = _check_deposit(state, tx.operator, tx.amount)
    return lambda: _deposit(state, sender, tx.operator, tx.amount, minted)


def handle_undelegate(
    state: LedgerState, sender: bytes, tx: Undelegate, spendable: int, ctx: object
) -> Effect:
    _check_other_operator(state, sender, tx.operator)
    withdrawal = _check_withdrawal(state, sender, tx.operator, tx.amount)
    return lambda: _withdraw(state, sender, tx.operator, withdrawal)


def _check_other_operator(state: LedgerState, sender: bytes, operator: bytes) -> None:
    if operator == sender:
        raise _refuse(TxCode.SELF_DELEGATION, "an operator bonds with Stake and Unbond")
    if operator not in state.operators:
        raise _refuse(TxCode.UNKNOWN_OPERATOR, f"{operator.hex()} is not an operator")


# ---------------------------------------------------------------------------------------------
# Epoch step and slashing


def release_matured(state: LedgerState) -> int:
    """Pay out the unbonding entries due by the end of the current epoch; return the sum."""
    kept: list[UnbondingEntry] = []
    released = 0
    for entry in state.unbonding:
        if entry.release_epoch <= state.epoch:
            state.credit(entry.account, entry.amount)
            released += entry.amount
        else:
            kept.append(entry)
    state.unbonding = kept
    return released


@dataclass(frozen=True)
class SlashEvent:
    """What one slash did: for the operator's dashboard and the node's log."""

    operator: bytes
    fraction_bps: int
    burned_bonded: int
    burned_unbonding: int
    jailed_until_epoch: int
    reason: str
    evidence_digest: bytes


def slash(
    state: LedgerState,
    operator: bytes,
    fraction_bps: int,
    reason: str,
    evidence_digest: bytes,
    *,
    jail: bool = True,
    infraction_epoch: int | None = None,
) -> SlashEvent:
    """Burn `fraction_bps` of `operator`'s pool, and of its pending unbonding entries.

    Burning from the pool charges the operator and every delegator pro rata through the
    share price, exactly. Each unbonding entry is burned `amount * bps // BPS` (rounded down,
    so no holder loses more than the fraction). Entries are answerable because their tokens
    were at stake when the fault may have happened: with `infraction_epoch` only those
    created in or after that epoch are touched, without it every pending entry is (the
    conservative default). Jailing lasts the rest of this epoch and `jail_epochs` more.
    Raises InvalidTransaction for unknown operators, bad fractions and replayed evidence.
    """
    if len(evidence_digest) != EVIDENCE_DIGEST_BYTES:
        raise _refuse(TxCode.MALFORMED, f"evidence digest must be {EVIDENCE_DIGEST_BYTES} bytes")
    if evidence_digest in state.evidence_seen:
        raise _refuse(TxCode.DUPLICATE_EVIDENCE, f"evidence {evidence_digest.hex()} already used")
    if not 0 <= fraction_bps <= BPS:
        raise _refuse(TxCode.MALFORMED, f"fraction {fraction_bps} bps is outside 0..{BPS}")
    op = state.operators.get(operator)
    if op is None:
        raise _refuse(TxCode.UNKNOWN_OPERATOR, f"{operator.hex()} is not an operator")
    from_pool = op.pool * fraction_bps // BPS
    op.pool -= from_pool
    from_unbonding = 0
    created_since = infraction_epoch if infraction_epoch is not None else -1
    for entry in state.unbonding:
        created = entry.release_epoch - state.params.unbonding_epochs
        if entry.operator == operator and created >= created_since:
            cut = entry.amount * fraction_bps // BPS
            entry.amount -= cut
            from_unbonding += cut
    op.slashed_total += from_pool + from_unbonding
    state.burned += from_pool + from_unbonding
    if jail:
        op.jailed_until_epoch = max(
            op.jailed_until_epoch, state.epoch + state.params.jail_epochs + 1
        )
    state.evidence_seen.add(evidence_digest)
    return SlashEvent(
        operator,
        fraction_bps,
        from_pool,
        from_unbonding,
        op.jailed_until_epoch,
        reason,
        evidence_digest,
    )
