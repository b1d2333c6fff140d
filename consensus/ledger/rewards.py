"""Reward emissions: the bootstrap subsidy that decays by epoch, and its split among
operators and their delegators.

The schedule is a halving every `halving_epochs` epochs with a straight-line glide inside each
period, so the subsidy falls a little every epoch instead of dropping by half at once:

    base(p)        = initial >> p                         p = epoch // halving_epochs
    emission(epoch) = base(p) - (base(p) // 2) * (epoch % H) // H

It is O(1), exact in integers, never increasing (the last epoch of a period still pays at
least ceil(base/2) >= base(p+1)), zero once `initial >> p` is, and its total is at most
2 * initial * H. A `max_supply` caps genesis + minted on top of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from consensus.ledger.params import BPS, PERMILLE, EmissionParams
from consensus.ledger.state import PROTOCOL_ACCOUNT, LedgerState


def emission_for_epoch(epoch: int, params: EmissionParams) -> int:
    """The subsidy scheduled for `epoch` (before the max-supply cap)."""
    if epoch < 0:
        raise ValueError("epoch must be non-negative")
    period, offset = divmod(epoch, params.halving_epochs)
    if period >= params.initial_per_epoch.bit_length():
        return 0
    base = params.initial_per_epoch >> period
    return base - (base // 2) * offset // params.halving_epochs


def capped_emission(state: LedgerState) -> int:
    """This epoch's subsidy, cut so genesis + minted never passes `max_supply`."""
    emission = state.params.emission
    amount = emission_for_epoch(state.epoch, emission)
    if emission.max_supply:
        room = emission.max_supply - state.genesis_supply - state.minted
        amount = max(0, min(amount, room))
    return amount


@dataclass(frozen=True)
class RewardShare:
    operator: bytes
    weight: int
    """pool x uptime permille."""
    reward: int
    """The operator pool's whole share, commission included."""
    commission: int
    """Paid to the operator's balance; the rest compounds into its pool."""
    work_units: int = 0
    """GPU-ms it delivered in the epoch (its claim on the work part)."""


@dataclass(frozen=True)
class EpochRewards:
    epoch: int
    minted: int
    to_protocol: int
    """The rounding remainder of the split (goes to the protocol account)."""
    shares: tuple[RewardShare, ...]


def distribute_rewards(
    state: LedgerState,
    uptime_permille: Mapping[bytes, int],
    work_units: Mapping[bytes, int] | None = None,
) -> EpochRewards:
    """Mint the epoch's subsidy and split it among active operators: `work_reward_bps` of it
    by delivered work (GPU-ms billed on winning replicas this epoch), the rest by pool x
    uptime. In an epoch without work, all of it goes by pool x uptime.

    Each operator's stake part is `stake_part * weight // total_weight` and its work part
    `work_part * work // total_work` (both rounded down). Its commission,
    `part * commission_bps // BPS`, goes to the operator's balance; the rest is added to its
    pool, which raises the value of every share pro rata, so the operator's self-bond and each
    delegator earn exactly in proportion to their shares without a per-holder loop. What the
    rounding of the split leaves over is credited to the protocol account. With no active
    operator (or all at zero uptime) nothing is minted: the subsidy pays for work, not for
    an empty network.
    """
    amount = capped_emission(state)
    weighted = (
        (operator, pool * uptime_permille.get(operator, PERMILLE))
        for operator, pool in state.bonded_stakes().items()
    )
    weights = [(operator, w) for operator, w in weighted if w > 0]
    total = sum(w for _, w in weights)
    if amount == 0 or total == 0:
        return EpochRewards(state.epoch, 0, 0, ())
    work = {o: (work_units or {}).get(o, 0) for o, _ in weights}
    work_total = sum(work.values())
    work_part = amount * state.params.market.work_reward_bps // BPS if work_total else 0
    stake_part = amount - work_part
    shares: list[RewardShare] = []
    for operator, weight in weights:
        reward = stake_part * weight // total
        if work_total:
            reward += work_part * work[operator] // work_total
        op = state.operators[operator]
        commission = reward * op.commission_bps // BPS
        state.credit(operator, commission)
        op.pool += reward - commission
        shares.append(RewardShare(operator, weight, reward, commission, work[operator]))
    remainder = amount - sum(s.reward for s in shares)
    state.credit(PROTOCOL_ACCOUNT, remainder)
    state.minted += amount
    return EpochRewards(state.epoch, amount, remainder, tuple(shares))
