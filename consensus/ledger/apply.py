"""Applying transactions and blocks: the ledger's state transition function.

`apply_block` is what every node runs on each committed block, in order: decode and apply
each transaction (a refused one is skipped and reported with its reason, and changes
nothing), then, on the block that closes an epoch, release matured unbonding, mint and split
the epoch's rewards and roll the committee seed. It then asserts conservation and returns the
new state root. Identical inputs give identical roots on every node: no clock, no global
randomness, no dict order, integers only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consensus.committee import committee_seed
from consensus.ledger.errors import InvalidTransaction, TxCode
from consensus.ledger.params import PERMILLE
from consensus.ledger.rewards import EpochRewards, distribute_rewards
from consensus.ledger.staking import (
    Effect,
    handle_delegate,
    handle_stake,
    handle_unbond,
    handle_undelegate,
    release_matured,
)
from consensus.ledger.state import PROTOCOL_ACCOUNT, Account, LedgerState
from consensus.ledger.tx import (
    Delegate,
    LedgerTx,
    Stake,
    Transfer,
    Tx,
    Unbond,
    Undelegate,
    decode_tx,
)

HASH_BYTES = 32


@dataclass(frozen=True)
class BlockContext:
    """What the ledger learns about a block from consensus, not from its transactions."""

    height: int
    """Heights start at 1 (genesis is height 0); the block at a multiple of epoch_blocks
    closes the epoch."""
    parent_hash: bytes = bytes(HASH_BYTES)
    """Hash of the previous committed block: mixed into the committee seed at epoch end."""
    uptime_permille: Mapping[bytes, int] = field(default_factory=dict)
    """Uptime per operator over the epoch, overriding what the ledger measured from
    heartbeats (liveness.py); an operator in neither counts 1000. Weights rewards."""

    def __post_init__(self) -> None:
        if self.height < 1:
            raise ValueError(f"block height must be at least 1, got {self.height}")
        if len(self.parent_hash) != HASH_BYTES:
            raise ValueError(f"parent_hash must be {HASH_BYTES} bytes")
        bad = [v for v in self.uptime_permille.values() if not 0 <= v <= PERMILLE]
        if bad:
            raise ValueError(f"uptime must be 0..{PERMILLE} permille, got {bad[0]}")


@dataclass
class BlockTally:
    """Per-block counters that are not ledger state: transactions per sender so far."""

    txs_by_sender: dict[bytes, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    tx_id: bytes
    sender: bytes
    kind: str
    nonce: int
    fee: int


@dataclass(frozen=True)
class Rejection:
    """A transaction of a committed block that was refused: what the sender is told."""

    index: int
    tx_id: bytes
    """SHA-256 of the bytes as they appeared in the block."""
    code: TxCode
    reason: str


@dataclass(frozen=True)
class EpochOutcome:
    epoch: int
    """The epoch that ended."""
    released: int
    rewards: EpochRewards
    next_seed: bytes


@dataclass(frozen=True)
class BlockOutcome:
    height: int
    receipts: tuple[Receipt, ...]
    rejected: tuple[Rejection, ...]
    epoch: EpochOutcome | None
    state_root: bytes


Handler = Callable[[LedgerState, bytes, Any, int, BlockContext], Effect]
"""(state, sender, record, spendable balance after the fee, ctx) -> effect. Validates only;
the effect it returns performs the change and must not fail."""


def _transfer(
    state: LedgerState, sender: bytes, tx: Transfer, spendable: int, ctx: BlockContext
) -> Effect:
    if tx.amount == 0:
        raise InvalidTransaction(TxCode.BELOW_MINIMUM, "amount must be at least 1")
    if tx.amount > spendable:
        raise InvalidTransaction(
            TxCode.INSUFFICIENT_FUNDS, f"sending {tx.amount} with {spendable} spendable"
        )

    def effect() -> None:
        state.debit(sender, tx.amount)
        state.credit(tx.to, tx.amount)

    return effect


TX_HANDLERS: dict[type[LedgerTx], Handler] = {
    Transfer: _transfer,
    Stake: handle_stake,
    Unbond: handle_unbond,
    Delegate: handle_delegate,
    Undelegate: handle_undelegate,
}


def register_tx_handler(cls: type[LedgerTx], handler: Handler) -> None:
    """Let another module (the market) add its transaction kinds; each kind once."""
    if cls in TX_HANDLERS and TX_HANDLERS[cls] is not handler:
        raise ValueError(f"{cls.__name__} already has a handler")
    TX_HANDLERS[cls] = handler


BlockHook = Callable[[LedgerState, BlockContext], None]
BLOCK_HOOKS: dict[str, BlockHook] = {}
"""Steps every block runs after its transactions, in name order (job expiry, ...). They must
not fail: a hook changes state only in ways that cannot be refused."""


def register_block_hook(name: str, hook: BlockHook) -> None:
    """Let a ledger module add a per-block step; each name once."""
    if name in BLOCK_HOOKS and BLOCK_HOOKS[name] is not hook:
        raise ValueError(f"block hook {name!r} already registered")
    BLOCK_HOOKS[name] = hook


def _validate(
    state: LedgerState, tx: Tx, ctx: BlockContext, tally: BlockTally | None,
    wire: bytes | None = None,
) -> tuple[Effect, bytes]:  # fmt: skip
    """Every check of one transaction, in the order a sender can act on; mutates nothing.
    `wire` is the transaction's bytes when the caller has them (a block's): they are what
    `tx` was decoded from, so encoding `tx` again would only give them back, at a cost."""
    params = state.params
    if tx.chain_id != state.chain_id:
        raise InvalidTransaction(TxCode.MALFORMED, f"signed for chain {tx.chain_id!r}")
    if wire is None:
        wire = tx.encode()
    if len(wire) > params.tx_bytes_max:
        raise InvalidTransaction(TxCode.TOO_LARGE, f"{len(wire)} bytes > {params.tx_bytes_max}")
    handler = TX_HANDLERS.get(type(tx.record))
    if handler is None:
        raise InvalidTransaction(TxCode.MALFORMED, f"{type(tx.record).__name__} is not a tx")
    record: LedgerTx = tx.record
    sender = tx.signer
    expected = state.nonce(sender)
    if record.nonce != expected:
        raise InvalidTransaction(TxCode.BAD_NONCE, f"expected nonce {expected}, got {record.nonce}")
    if record.fee < params.min_fee:
        raise InvalidTransaction(TxCode.FEE_TOO_LOW, f"fee {record.fee} < {params.min_fee}")
    sent = tally.txs_by_sender.get(sender, 0) if tally else 0
    if sent >= params.txs_per_account_per_block_max:
        raise InvalidTransaction(TxCode.RATE_LIMITED, f"{sent} transactions already in this block")
    balance = state.balance(sender)
    if balance < record.fee:
        raise InvalidTransaction(TxCode.INSUFFICIENT_FUNDS, f"fee {record.fee} > balance {balance}")
    effect = handler(state, sender, record, balance - record.fee, ctx)
    return effect, hashlib.sha256(wire).digest()


def check_tx(
    state: LedgerState, tx: Tx, ctx: BlockContext, tally: BlockTally | None = None
) -> None:
    """Would `tx` apply now? Raises InvalidTransaction if not; changes nothing (mempool use)."""
    _validate(state, tx, ctx, tally)


def apply_tx(
    state: LedgerState, tx: Tx, ctx: BlockContext, tally: BlockTally | None = None,
    wire: bytes | None = None,
) -> Receipt:  # fmt: skip
    """Apply one verified transaction (from `decode_tx`) fully, or raise InvalidTransaction
    and leave `state` exactly as it was. `wire`: the bytes `tx` was decoded from, if at
    hand (its size is checked and its id is their SHA-256, as for a rejection)."""
    effect, digest = _validate(state, tx, ctx, tally, wire)
    record: LedgerTx = tx.record
    sender = tx.signer
    state.accounts.setdefault(sender, Account()).nonce += 1  # first: the account now persists
    effect()
    state.debit(sender, record.fee)
    state.credit(PROTOCOL_ACCOUNT, record.fee)
    state.fees_collected += record.fee
    if tally is not None:
        tally.txs_by_sender[sender] = tally.txs_by_sender.get(sender, 0) + 1
    return Receipt(digest, sender, type(record).__name__, record.nonce, record.fee)


def ends_epoch(state: LedgerState, height: int) -> bool:
    return height % state.params.epoch_blocks == 0


def end_epoch(state: LedgerState, ctx: BlockContext) -> EpochOutcome:
    """Close the current epoch: release matured unbonding, mint and split rewards, roll the
    committee seed, and move to the next epoch."""
    released = release_matured(state)
    uptime = {**state.uptime_permille(), **ctx.uptime_permille}
    rewards = distribute_rewards(state, uptime, state.work_units())
    state.close_uptime_epoch()
    state.committee_seed = committee_seed(state.committee_seed, ctx.parent_hash)
    ended = state.epoch
    state.epoch += 1
    return EpochOutcome(ended, released, rewards, state.committee_seed)


def apply_block(
    state: LedgerState,
    txs: Sequence[bytes],
    ctx: BlockContext,
    decode: Callable[[bytes], Tx] | None = None,
) -> BlockOutcome:
    """Apply a committed block's transactions (raw bytes, in block order) and, when the block
    closes an epoch, the epoch step. Raises ValueError if `ctx.height` is not the next height
    (the caller's bug) and ConservationError if the books do not balance (ours).

    `decode` must behave exactly like `decode_tx` for this chain (raise InvalidTransaction
    the same way); a node passes one that remembers transactions it verified on admission,
    so each signature is checked once per node, not once per stage."""
    if ctx.height != state.height + 1:
        raise ValueError(f"block {ctx.height} does not follow height {state.height}")
    tally = BlockTally()
    receipts: list[Receipt] = []
    rejected: list[Rejection] = []
    for index, data in enumerate(txs):
        try:
            if decode is None:
                tx = decode_tx(
                    data, chain_id=state.chain_id, tx_bytes_max=state.params.tx_bytes_max
                )
            else:
                tx = decode(data)
            receipts.append(apply_tx(state, tx, ctx, tally, data))
        except InvalidTransaction as exc:
            digest = hashlib.sha256(data).digest()
            rejected.append(Rejection(index, digest, exc.code, exc.reason))
    state.height = ctx.height
    for name in sorted(BLOCK_HOOKS):
        BLOCK_HOOKS[name](state, ctx)
    epoch = end_epoch(state, ctx) if ends_epoch(state, ctx.height) else None
    state.check_conservation()
    return BlockOutcome(ctx.height, tuple(receipts), tuple(rejected), epoch, state.state_root())
