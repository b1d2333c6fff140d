"""The chain's economic and operational parameters, fixed at genesis.

Parameters are wire structs so they travel inside the state's canonical encoding (and so its
root): two nodes that disagree on a parameter disagree on every state root, at once, rather
than drifting apart on the first block where the difference matters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from consensus.committee import COMMITTEE_SIZE_MAX
from consensus.market.pricing import PricingParams
from p2p.wire import U64_MAX, Nested, Struct, UInt

BPS = 10_000
"""Basis points in one whole: commissions and slashing fractions."""
PERMILLE = 1_000
"""Uptime is reported in permille; 1000 is a node that never missed."""
TX_BYTES_MIN = 256
"""No cap may be set below the size of an ordinary transfer envelope (about 150 bytes)."""


def _param(default: int, maximum: int = U64_MAX) -> Any:
    return dataclasses.field(default=default, metadata={"wire": UInt(maximum)})


@dataclass(frozen=True)
class EmissionParams(Struct):
    """The bootstrap subsidy: `initial_per_epoch` base units, halving every `halving_epochs`
    epochs with a linear glide inside each period (see rewards.emission_for_epoch)."""

    initial_per_epoch: int = _param(1_000_000)
    halving_epochs: int = _param(100)
    max_supply: int = _param(0)
    """Cap on genesis supply + everything ever minted; 0 means no cap (then the schedule's own
    sum, at most 2 * initial * halving_epochs, bounds it)."""

    def invariant_violation(self) -> str | None:
        if self.halving_epochs == 0:
            return "halving_epochs must be at least 1"
        return None

    def emission_bound(self) -> int:
        """The most the schedule can ever mint (a geometric series bound)."""
        return 2 * self.initial_per_epoch * self.halving_epochs


@dataclass(frozen=True)
class MarketParams(Struct):
    """The job lifecycle's windows (in blocks: the ledger's only clock), its fee and its
    penalties. See consensus/ledger/job_flow.py and job_results.py."""

    commit_window_blocks: int = _param(30, 1_000_000)
    """Blocks an assigned replica has to commit to its result before it is a no-show."""
    reveal_window_blocks: int = _param(15, 1_000_000)
    """Blocks a committed replica has, once all have committed, to reveal."""
    job_fee_bps: int = _param(500, BPS)
    """The protocol's cut of every job payment."""
    no_show_slash_bps: int = _param(100, BPS)
    """Slashed from a replica that does not commit or does not reveal in time (no jail)."""
    wrong_result_slash_bps: int = _param(1_000, BPS)
    """Slashed from a replica on the losing side of a majority verdict (and jailed)."""
    tie_breakers_max: int = _param(2, 3)
    """Extra replicas a job may draw to break ties before it fails."""
    heartbeat_blocks: int = _param(10, 1_000_000)
    """How often (in blocks) a node with an offer sends a `Heartbeat`."""
    down_after_blocks: int = _param(25, 1_000_000)
    """A node not heard from for more blocks than this is down: not scheduled on, its
    unfinished replicas rerouted at once, and these blocks count against its uptime."""
    deadline_blocks_max: int = _param(1_000_000, U64_MAX)
    """The furthest deadline a job may set: bounds how long its escrow can stay locked."""
    strikes_to_jail: int = _param(2, 1_000)
    """Verdicts a node may lose in one epoch without being slashable (see job_results)
    before it is jailed, stake untouched: a persistent cheater stops being scheduled."""
    challenge_every_blocks: int = _param(100, 1_000_000)
    """How often the protocol probes a random node with a challenge job (0: never)."""
    watch_epochs: int = _param(2, 1_000)
    """How long a `FlagNode` puts a node under audit of every job it takes part in."""
    flags_per_epoch_max: int = _param(4, 1_000)
    """`FlagNode`s one operator may send per epoch: audits cost the protocol, so an operator
    cannot flag its way into auditing everyone."""
    spot_check_permille: int = _param(50, 1000)
    """Odds that a newly placed job gets one more replica on yet another operator, paid by
    the protocol account: an audit that a set of colluding or lazy replicas cannot plan for."""
    work_reward_bps: int = _param(5_000, BPS)
    """Share of each epoch's emission split by delivered work (GPU-ms billed) rather than
    by stake x uptime (all of it goes by stake x uptime in an epoch without work)."""

    def invariant_violation(self) -> str | None:
        if self.commit_window_blocks == 0 or self.reveal_window_blocks == 0:
            return "commit_window_blocks and reveal_window_blocks must be at least 1"
        if self.heartbeat_blocks == 0 or self.down_after_blocks < self.heartbeat_blocks:
            return "heartbeat_blocks must be at least 1 and down_after_blocks at least that"
        return None


@dataclass(frozen=True)
class LedgerParams(Struct):
    """Every knob of the ledger. Units are in the names; amounts are base units."""

    epoch_blocks: int = _param(100)
    unbonding_epochs: int = _param(2, 10_000)
    unbonding_entries_max: int = _param(16, 1_000)
    """Pending unbonding entries per account: bounds the queue a single key can grow."""
    min_stake: int = _param(1_000)
    """Least self-bond of an active operator (committee member, reward earner)."""
    min_delegation: int = _param(1)
    min_fee: int = _param(1)
    commission_step_max_bps: int = _param(100, BPS)
    """Most a commission may move in one change (at most one change per epoch), so delegators
    have time to leave before a large hike lands."""
    jail_epochs: int = _param(4, 1_000_000)
    committee_size: int = _param(4, COMMITTEE_SIZE_MAX)
    txs_per_account_per_block_max: int = _param(16, 10_000)
    tx_bytes_max: int = _param(1024, 1024 * 1024)
    emission: EmissionParams = dataclasses.field(
        default_factory=EmissionParams, metadata={"wire": Nested(EmissionParams)}
    )
    market: MarketParams = dataclasses.field(
        default_factory=MarketParams, metadata={"wire": Nested(MarketParams)}
    )
    pricing: PricingParams = dataclasses.field(
        default_factory=PricingParams, metadata={"wire": Nested(PricingParams)}
    )

    def invariant_violation(self) -> str | None:
        if self.epoch_blocks == 0:
            return "epoch_blocks must be at least 1"
        if self.min_stake == 0 or self.min_delegation == 0:
            return "min_stake and min_delegation must be at least 1"
        if not 1 <= self.committee_size <= COMMITTEE_SIZE_MAX:
            return f"committee_size must be 1..{COMMITTEE_SIZE_MAX}"
        if self.txs_per_account_per_block_max == 0 or self.unbonding_entries_max == 0:
            return "txs_per_account_per_block_max and unbonding_entries_max must be at least 1"
        if self.tx_bytes_max < TX_BYTES_MIN:
            return f"tx_bytes_max must be at least {TX_BYTES_MIN}"
        return None
