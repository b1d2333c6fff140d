"""Reading a state back from its canonical encoding (`LedgerState.encode`).

The bytes whose SHA-256 is the state root are also a complete snapshot: the store can persist
them and a node catching up can fetch them from a peer, checking them against a committed
root before trusting a single field. `decode_state` is strict: the schema below checks every
field, and the decoded state must re-encode to the very same bytes (sorted, unique keys).
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.ledger.job_records import JobRecord
from consensus.ledger.market_records import Offer
from consensus.ledger.params import BPS, LedgerParams
from consensus.ledger.state import (
    STATE_FORMAT,
    UPTIME_EPOCHS_KEPT,
    Account,
    Escrow,
    LedgerState,
    Liveness,
    Operator,
    UnbondingEntry,
)
from consensus.market.pricing import CLASSES_MAX, GPU_CLASS_BYTES_MAX, PriceBook
from p2p import codec
from p2p.errors import DecodeError
from p2p.wire import CHAIN_ID_BYTES_MAX, Blob, Nested, Seq, Struct, Text, UInt, wire_field

ROWS_MAX = 10_000_000
SNAPSHOT_BYTES_MAX = 1 << 30


def _key() -> Blob:
    return Blob(32, 32)


@dataclass(frozen=True)
class AccountRow(Struct):
    account: bytes = wire_field(_key())
    balance: int = wire_field(UInt())
    nonce: int = wire_field(UInt())


@dataclass(frozen=True)
class OperatorRow(Struct):
    operator: bytes = wire_field(_key())
    pool: int = wire_field(UInt())
    shares: int = wire_field(UInt())
    commission_bps: int = wire_field(UInt(BPS))
    commission_epoch: int = wire_field(UInt())
    jailed_until_epoch: int = wire_field(UInt())
    slashed_total: int = wire_field(UInt())


@dataclass(frozen=True)
class DelegationRow(Struct):
    delegator: bytes = wire_field(_key())
    operator: bytes = wire_field(_key())
    shares: int = wire_field(UInt())


@dataclass(frozen=True)
class UnbondingRow(Struct):
    account: bytes = wire_field(_key())
    operator: bytes = wire_field(_key())
    amount: int = wire_field(UInt())
    release_epoch: int = wire_field(UInt())


@dataclass(frozen=True)
class EscrowRow(Struct):
    job_id: bytes = wire_field(_key())
    payer: bytes = wire_field(_key())
    amount: int = wire_field(UInt())


@dataclass(frozen=True)
class JobRow(Struct):
    job_id: bytes = wire_field(_key())
    record: JobRecord = wire_field(Nested(JobRecord))  # noqa: RUF009


@dataclass(frozen=True)
class OfferRow(Struct):
    node: bytes = wire_field(_key())
    offer: Offer = wire_field(Nested(Offer))  # noqa: RUF009


@dataclass(frozen=True)
class UptimeRow(Struct):
    epoch: int = wire_field(UInt())
    up_blocks: int = wire_field(UInt())
    counted_blocks: int = wire_field(UInt())


@dataclass(frozen=True)
class LivenessRow(Struct):
    node: bytes = wire_field(_key())
    last_heartbeat: int = wire_field(UInt())
    up_blocks: int = wire_field(UInt())
    counted_blocks: int = wire_field(UInt())
    work_units: int = wire_field(UInt())
    history: tuple[UptimeRow, ...] = wire_field(Seq(Nested(UptimeRow), UPTIME_EPOCHS_KEPT))
    strikes: int = wire_field(UInt())
    watch_until_epoch: int = wire_field(UInt())
    flags_sent: int = wire_field(UInt())


@dataclass(frozen=True)
class PriceRow(Struct):
    gpu_class: str = wire_field(Text(GPU_CLASS_BYTES_MAX))
    price: int = wire_field(UInt())


@dataclass(frozen=True)
class StateSnapshot(Struct):
    """The schema of `LedgerState.to_wire()`, field for field."""

    format: int = wire_field(UInt())
    chain_id: bytes = wire_field(Blob(CHAIN_ID_BYTES_MAX))
    params: LedgerParams = wire_field(Nested(LedgerParams))  # noqa: RUF009
    height: int = wire_field(UInt())
    epoch: int = wire_field(UInt())
    genesis_supply: int = wire_field(UInt())
    minted: int = wire_field(UInt())
    burned: int = wire_field(UInt())
    fees_collected: int = wire_field(UInt())
    committee_seed: bytes = wire_field(_key())
    accounts: tuple[AccountRow, ...] = wire_field(Seq(Nested(AccountRow), ROWS_MAX))
    operators: tuple[OperatorRow, ...] = wire_field(Seq(Nested(OperatorRow), ROWS_MAX))
    delegations: tuple[DelegationRow, ...] = wire_field(Seq(Nested(DelegationRow), ROWS_MAX))
    unbonding: tuple[UnbondingRow, ...] = wire_field(Seq(Nested(UnbondingRow), ROWS_MAX))
    escrows: tuple[EscrowRow, ...] = wire_field(Seq(Nested(EscrowRow), ROWS_MAX))
    evidence_seen: tuple[bytes, ...] = wire_field(Seq(_key(), ROWS_MAX))
    jobs: tuple[JobRow, ...] = wire_field(Seq(Nested(JobRow), ROWS_MAX))
    offers: tuple[OfferRow, ...] = wire_field(Seq(Nested(OfferRow), ROWS_MAX))
    liveness: tuple[LivenessRow, ...] = wire_field(Seq(Nested(LivenessRow), ROWS_MAX))
    prices: tuple[PriceRow, ...] = wire_field(Seq(Nested(PriceRow), CLASSES_MAX))

    def invariant_violation(self) -> str | None:
        if self.format != STATE_FORMAT:
            return f"unknown state format {self.format}"
        return None


def _prices(rows: tuple[PriceRow, ...]) -> PriceBook:
    try:
        return PriceBook({r.gpu_class: r.price for r in rows})
    except ValueError as exc:
        raise DecodeError(f"state snapshot: {exc}") from None


def decode_state(data: bytes, *, max_bytes: int = SNAPSHOT_BYTES_MAX) -> LedgerState:
    """A state from its canonical bytes; DecodeError if they are not exactly that."""
    snap = StateSnapshot.from_wire(codec.unpack(data, max_bytes=max_bytes))
    state = LedgerState(
        chain_id=snap.chain_id,
        params=snap.params,
        height=snap.height,
        epoch=snap.epoch,
        committee_seed=snap.committee_seed,
        genesis_supply=snap.genesis_supply,
        minted=snap.minted,
        burned=snap.burned,
        fees_collected=snap.fees_collected,
        accounts={r.account: Account(r.balance, r.nonce) for r in snap.accounts},
        operators={
            r.operator: Operator(
                r.pool,
                r.shares,
                r.commission_bps,
                r.commission_epoch,
                r.jailed_until_epoch,
                r.slashed_total,
            )
            for r in snap.operators
        },
        delegations={(r.delegator, r.operator): r.shares for r in snap.delegations},
        unbonding=[
            UnbondingEntry(r.account, r.operator, r.amount, r.release_epoch) for r in snap.unbonding
        ],
        escrows={r.job_id: Escrow(r.payer, r.amount) for r in snap.escrows},
        evidence_seen=set(snap.evidence_seen),
        jobs={r.job_id: r.record for r in snap.jobs},
        offers={r.node: r.offer for r in snap.offers},
        liveness={
            r.node: Liveness(
                r.last_heartbeat,
                r.up_blocks,
                r.counted_blocks,
                r.work_units,
                [(h.epoch, h.up_blocks, h.counted_blocks) for h in r.history],
                r.strikes,
                r.watch_until_epoch,
                r.flags_sent,
            )
            for r in snap.liveness
        },
        prices=_prices(snap.prices),
    )
    if state.encode() != data:
        raise DecodeError("state snapshot is not canonical (unsorted or repeated keys)")
    return state
