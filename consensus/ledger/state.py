"""The ledger's replicated state, its canonical encoding (and so its root), and the supply
check that runs after every block.

Stake lives in per-operator pools of shares. An operator's pool holds every token bonded to
it (its own self-bond and all delegations); each holder, the operator included, owns shares
of the pool, and a holding is worth `shares * pool // total_shares` (rounded down). This makes
the two pool-wide events exact in integers without touching any holder:
- slashing burns a fraction of `pool`, so every share is worth proportionally less;
- rewards (after commission) are added to `pool`, so every share is worth proportionally more.
Rounding always favours the pool: deposits mint shares rounded down, withdrawals burn shares
rounded up, and valuations round down. What rounding leaves behind stays in the pool for the
remaining holders; a withdrawal that burns a holding's last share pays its whole value, so
when a pool's last share leaves, the pool is exactly empty: no dust is ever stranded, and
conservation stays exact without a rounding account.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from consensus.committee import Committee, select_committee
from consensus.ledger.errors import ConservationError
from consensus.ledger.job_records import JobRecord
from consensus.ledger.market_records import Offer
from consensus.ledger.params import LedgerParams
from consensus.market.pricing import PriceBook
from p2p import codec

PROTOCOL_ACCOUNT = hashlib.sha256(b"gpumesh/protocol-account/v1").digest()
"""Where fees and reward remainders go. A hash, not a key: no one can sign for it, so what it
holds can only leave by a future protocol rule."""
STATE_FORMAT = 2
"""2: the market's tables (offers, liveness, prices) and job lifecycle fields."""


@dataclass
class Account:
    balance: int = 0
    nonce: int = 0
    """The nonce the account's next transaction must carry."""


@dataclass
class Operator:
    pool: int = 0
    """Tokens bonded to the operator: self-bond plus delegations, after slashes and rewards."""
    shares: int = 0
    """Shares outstanding, the operator's own included."""
    commission_bps: int = 0
    commission_epoch: int = 0
    """Epoch of the last commission change (or of registration)."""
    jailed_until_epoch: int = 0
    """Jailed while the current epoch is below this: no rewards, no committee, no delegations."""
    slashed_total: int = 0


@dataclass
class UnbondingEntry:
    account: bytes
    operator: bytes
    """Still answerable for this operator's faults until released (see slashing)."""
    amount: int
    release_epoch: int
    """Paid out at the end of this epoch."""


UPTIME_EPOCHS_KEPT = 32
"""Closed epochs of uptime kept per node in state (for `gpumesh uptime`)."""


@dataclass
class Liveness:
    """What the ledger measured of a node that offers capacity (consensus/ledger/liveness.py).
    Counters cover the current epoch; `history` holds closed epochs, newest last."""

    last_heartbeat: int = 0
    """Height of its last sign of life (a heartbeat or an offer)."""
    up_blocks: int = 0
    """Blocks of this epoch in which it was up (heard from within `down_after_blocks`)."""
    counted_blocks: int = 0
    """Blocks of this epoch in which it had an offer (so was expected to be up)."""
    work_units: int = 0
    """GPU-milliseconds billed on its winning replicas this epoch: the work part of rewards."""
    history: list[tuple[int, int, int]] = field(default_factory=list)
    """(epoch, up_blocks, counted_blocks) of the last UPTIME_EPOCHS_KEPT closed epochs."""
    strikes: int = 0
    """Verdicts lost this epoch that could not be slashed (the majority rested on replicas
    that had seen the digests): enough of them jail the node without burning stake."""
    watch_until_epoch: int = 0
    """Flagged for anomalous runtimes (`FlagNode`): every job it takes part in is audited
    while the epoch is below this."""
    flags_sent: int = 0
    """`FlagNode`s this node sent this epoch (bounded by flags_per_epoch_max)."""


@dataclass(frozen=True)
class Escrow:
    payer: bytes
    amount: int


@dataclass(frozen=True)
class SupplyTotals:
    balances: int
    bonded: int
    unbonding: int
    escrowed: int

    @property
    def total(self) -> int:
        return self.balances + self.bonded + self.unbonding + self.escrowed


@dataclass
class LedgerState:
    """Mutable, owned by one caller; `clone()` before speculative execution."""

    chain_id: bytes
    params: LedgerParams
    height: int = 0
    epoch: int = 0
    committee_seed: bytes = bytes(32)
    genesis_supply: int = 0
    minted: int = 0
    burned: int = 0
    fees_collected: int = 0
    accounts: dict[bytes, Account] = field(default_factory=dict)
    operators: dict[bytes, Operator] = field(default_factory=dict)
    delegations: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    """(delegator, operator) -> shares. The operator's self-bond is (operator, operator)."""
    unbonding: list[UnbondingEntry] = field(default_factory=list)
    """In the order created (which every node agrees on); released in that order."""
    escrows: dict[bytes, Escrow] = field(default_factory=dict)
    evidence_seen: set[bytes] = field(default_factory=set)
    """Digests of slashing evidence already punished: the same fault is punished once."""
    jobs: dict[bytes, JobRecord] = field(default_factory=dict)
    """job id -> its record (consensus.ledger.jobs); rows are frozen, replaced on change."""
    offers: dict[bytes, Offer] = field(default_factory=dict)
    """node -> its committed capacity offer (consensus.ledger.offers); frozen rows."""
    liveness: dict[bytes, Liveness] = field(default_factory=dict)
    """node -> its measured uptime and delivered work (consensus.ledger.liveness)."""
    prices: PriceBook = field(default_factory=PriceBook)
    """GPU class -> price per GPU-hour (consensus.ledger.prices); immutable, replaced."""

    # -----------------------------------------------------------------------------------------
    # Reading

    def balance(self, account: bytes) -> int:
        acct = self.accounts.get(account)
        return acct.balance if acct else 0

    def nonce(self, account: bytes) -> int:
        acct = self.accounts.get(account)
        return acct.nonce if acct else 0

    def shares_of(self, holder: bytes, operator: bytes) -> int:
        return self.delegations.get((holder, operator), 0)

    def stake_value(self, holder: bytes, operator: bytes) -> int:
        """What `holder`'s shares in `operator`'s pool are worth now, rounded down."""
        op = self.operators.get(operator)
        shares = self.shares_of(holder, operator)
        if op is None or shares == 0:
            return 0
        return shares * op.pool // op.shares

    def self_stake(self, operator: bytes) -> int:
        return self.stake_value(operator, operator)

    def is_jailed(self, operator: bytes) -> bool:
        op = self.operators.get(operator)
        return op is not None and self.epoch < op.jailed_until_epoch

    def is_active(self, operator: bytes) -> bool:
        """Eligible for the committee and for rewards: not jailed, self-bond at the minimum."""
        op = self.operators.get(operator)
        return (
            op is not None
            and op.pool > 0
            and not self.is_jailed(operator)
            and self.self_stake(operator) >= self.params.min_stake
        )

    def bonded_stakes(self) -> dict[bytes, int]:
        """Active operators and their whole pools: the committee draw's input."""
        return {o: self.operators[o].pool for o in sorted(self.operators) if self.is_active(o)}

    def next_committee(self) -> Committee:
        """The committee drawn from current stakes and the committed seed (at an epoch's
        end, the next epoch's). Raises NoEligibleStake when no operator is active."""
        return select_committee(
            self.bonded_stakes(), self.committee_seed, self.params.committee_size
        )

    def uptime_permille(self) -> dict[bytes, int]:
        """This epoch's measured uptime of every node counted in it (rewards weigh by it)."""
        return {
            node: live.up_blocks * 1000 // live.counted_blocks
            for node, live in sorted(self.liveness.items())
            if live.counted_blocks
        }

    def work_units(self) -> dict[bytes, int]:
        """GPU-milliseconds each node delivered (and was paid for) this epoch."""
        return {n: live.work_units for n, live in sorted(self.liveness.items()) if live.work_units}

    def close_uptime_epoch(self) -> None:
        """Move this epoch's counters into each node's history and start afresh."""
        for live in self.liveness.values():
            if live.counted_blocks:
                live.history.append((self.epoch, live.up_blocks, live.counted_blocks))
                del live.history[:-UPTIME_EPOCHS_KEPT]
            live.up_blocks = live.counted_blocks = live.work_units = live.strikes = 0
            live.flags_sent = 0

    def unbonding_count(self, account: bytes) -> int:
        return sum(1 for e in self.unbonding if e.account == account)

    def holders(self, operator: bytes) -> Iterator[tuple[bytes, int]]:
        """(holder, shares) of one pool, sorted by holder."""
        for (holder, op), shares in sorted(self.delegations.items()):
            if op == operator:
                yield holder, shares

    def totals(self) -> SupplyTotals:
        return SupplyTotals(
            balances=sum(a.balance for a in self.accounts.values()),
            bonded=sum(o.pool for o in self.operators.values()),
            unbonding=sum(e.amount for e in self.unbonding),
            escrowed=sum(e.amount for e in self.escrows.values()),
        )

    @property
    def expected_supply(self) -> int:
        return self.genesis_supply + self.minted - self.burned

    def check_conservation(self) -> None:
        """genesis + minted - burned == balances + bonded + unbonding + escrow, no amount is
        negative, and each pool's shares add up. Raises ConservationError with the figures."""
        problems = list(self._negative_amounts()) + list(self._share_mismatches())
        totals = self.totals()
        if totals.total != self.expected_supply:
            problems.append(
                f"supply {totals.total} ({totals}) != genesis {self.genesis_supply} + minted "
                f"{self.minted} - burned {self.burned} = {self.expected_supply}"
            )
        if problems:
            raise ConservationError(f"height {self.height}: " + "; ".join(problems))

    def _negative_amounts(self) -> Iterator[str]:
        for key, a in self.accounts.items():
            if a.balance < 0 or a.nonce < 0:
                yield f"account {key.hex()} has {a}"
        for key, o in self.operators.items():
            if min(o.pool, o.shares, o.commission_bps) < 0 or (o.shares == 0 and o.pool != 0):
                yield f"operator {key.hex()} has {o}"
        if any(e.amount < 0 for e in self.unbonding) or any(
            e.amount <= 0 for e in self.escrows.values()
        ):
            yield "a negative unbonding entry or a non-positive escrow"
        if min(self.minted, self.burned, self.genesis_supply) < 0:
            yield "a negative supply counter"

    def _share_mismatches(self) -> Iterator[str]:
        sums: dict[bytes, int] = {}
        for (_, operator), shares in self.delegations.items():
            if shares <= 0:
                yield f"a holding of {shares} shares in {operator.hex()}"
            sums[operator] = sums.get(operator, 0) + shares
        for key, op in self.operators.items():
            held = sums.get(key, 0)
            if held != op.shares:
                yield f"operator {key.hex()} counts {op.shares} shares, holders hold {held}"
        for key in sums.keys() - self.operators.keys():
            yield f"shares held in unknown operator {key.hex()}"

    # -----------------------------------------------------------------------------------------
    # Changing (for the ledger's own modules: these never refuse, callers validated first)

    def credit(self, account: bytes, amount: int) -> None:
        if amount:  # never store an empty account: it would change the root for nothing
            self.accounts.setdefault(account, Account()).balance += amount

    def debit(self, account: bytes, amount: int) -> None:
        acct = self.accounts[account]
        if acct.balance < amount:
            raise ConservationError(
                f"debit of {amount} from {account.hex()} holding {acct.balance}"
            )
        acct.balance -= amount
        if acct.balance == 0 and acct.nonce == 0:
            del self.accounts[account]

    def clone(self) -> LedgerState:
        """An independent copy (for a proposer's trial run of a block)."""
        return LedgerState(
            chain_id=self.chain_id,
            params=self.params,
            height=self.height,
            epoch=self.epoch,
            committee_seed=self.committee_seed,
            genesis_supply=self.genesis_supply,
            minted=self.minted,
            burned=self.burned,
            fees_collected=self.fees_collected,
            accounts={k: Account(a.balance, a.nonce) for k, a in self.accounts.items()},
            operators={k: Operator(**vars(o)) for k, o in self.operators.items()},
            delegations=dict(self.delegations),
            unbonding=[UnbondingEntry(**vars(e)) for e in self.unbonding],
            escrows=dict(self.escrows),
            evidence_seen=set(self.evidence_seen),
            jobs=dict(self.jobs),
            offers=dict(self.offers),
            prices=self.prices,
            liveness={
                k: Liveness(
                    v.last_heartbeat,
                    v.up_blocks,
                    v.counted_blocks,
                    v.work_units,
                    list(v.history),
                    v.strikes,
                    v.watch_until_epoch,
                    v.flags_sent,
                )
                for k, v in self.liveness.items()
            },
        )

    # -----------------------------------------------------------------------------------------
    # Canonical encoding

    def to_wire(self) -> list[codec.Value]:
        """The whole state as one canonical value: fixed field order, every map sorted by key.
        Built by hand for speed; `snapshot.StateSnapshot` is its schema and reads it back."""
        return [
            STATE_FORMAT,
            self.chain_id,
            self.params.to_wire(),
            self.height,
            self.epoch,
            self.genesis_supply,
            self.minted,
            self.burned,
            self.fees_collected,
            self.committee_seed,
            [[k, a.balance, a.nonce] for k, a in sorted(self.accounts.items())],
            [
                [
                    k,
                    o.pool,
                    o.shares,
                    o.commission_bps,
                    o.commission_epoch,
                    o.jailed_until_epoch,
                    o.slashed_total,
                ]
                for k, o in sorted(self.operators.items())
            ],
            [[d, o, s] for (d, o), s in sorted(self.delegations.items())],
            [[e.account, e.operator, e.amount, e.release_epoch] for e in self.unbonding],
            [[j, e.payer, e.amount] for j, e in sorted(self.escrows.items())],
            sorted(self.evidence_seen),
            [[j, r.to_wire()] for j, r in sorted(self.jobs.items())],
            [[n, o.to_wire()] for n, o in sorted(self.offers.items())],
            [
                [
                    n,
                    v.last_heartbeat,
                    v.up_blocks,
                    v.counted_blocks,
                    v.work_units,
                    [list(h) for h in v.history],
                    v.strikes,
                    v.watch_until_epoch,
                    v.flags_sent,
                ]
                for n, v in sorted(self.liveness.items())
            ],
            self.prices.to_wire(),
        ]

    def encode(self) -> bytes:
        return codec.pack(self.to_wire())

    def state_root(self) -> bytes:
        """SHA-256 of the canonical encoding: equal roots mean equal states, field by field."""
        return hashlib.sha256(self.encode()).digest()
