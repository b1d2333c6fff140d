"""JSON views of the ledger for the status endpoint and the CLI: one account, or all of them.

Read-only and computed on demand from the committed state at the head; amounts are integers
in base units, keys are lower-case hex.
"""

from __future__ import annotations

import hashlib

from consensus.bft.block import decode_block
from consensus.ledger.state import LedgerState

LEDGER_ROWS_MAX = 10_000


def account_view(state: LedgerState, account: bytes) -> dict[str, object] | None:
    """Balance, nonce, stakes, delegations and unbonding of `account`; None if the ledger
    knows nothing of it."""
    acct = state.accounts.get(account)
    staked = 0
    stakes: list[dict[str, object]] = []
    for (holder, op), shares in sorted(state.delegations.items()):
        if holder != account:
            continue
        value = state.stake_value(account, op)
        staked += value
        row = {"operator": op.hex(), "shares": shares, "value": value, "self": op == account}
        stakes.append(row)
    unbonding = [
        {"operator": e.operator.hex(), "amount": e.amount, "release_epoch": e.release_epoch}
        for e in state.unbonding
        if e.account == account
    ]
    operator = _operator_view(state, account) if account in state.operators else None
    if acct is None and not stakes and not unbonding and operator is None:
        return None
    return {
        "account": account.hex(),
        "height": state.height,
        "balance": acct.balance if acct else 0,
        "nonce": acct.nonce if acct else 0,
        "staked": staked,
        "stakes": stakes,
        "unbonding": unbonding,
        "operator": operator,
    }


def block_tx_ids(block: bytes) -> list[str]:
    """The hex ids of a committed block's transactions, in block order: SHA-256 of each
    transaction's bytes, as the mempool, /tx/<id> and `consensus.ledger.tx.tx_id` name them."""
    return [hashlib.sha256(data).hexdigest() for data in decode_block(block).txs]


def _operator_view(state: LedgerState, operator: bytes) -> dict[str, object]:
    op = state.operators[operator]
    return {
        "operator": operator.hex(),
        "pool": op.pool,
        "shares": op.shares,
        "self_stake": state.self_stake(operator),
        "commission_bps": op.commission_bps,
        "jailed": state.is_jailed(operator),
        "active": state.is_active(operator),
        "slashed_total": op.slashed_total,
    }


def ledger_view(state: LedgerState, limit: int = LEDGER_ROWS_MAX) -> dict[str, object]:
    """Every account (balances, stakes) and every operator, at most `limit` of each."""
    keys = sorted(
        set(state.accounts)
        | {holder for holder, _ in state.delegations}
        | {e.account for e in state.unbonding}
    )
    rows = [account_view(state, k) for k in keys[:limit]]
    totals = state.totals()
    return {
        "height": state.height,
        "epoch": state.epoch,
        "accounts": [r for r in rows if r is not None],
        "accounts_total": len(keys),
        "operators": [_operator_view(state, o) for o in sorted(state.operators)[:limit]],
        "supply": {
            "total": totals.total,
            "balances": totals.balances,
            "bonded": totals.bonded,
            "unbonding": totals.unbonding,
            "escrowed": totals.escrowed,
            "minted": state.minted,
            "burned": state.burned,
            "fees_collected": state.fees_collected,
        },
    }
