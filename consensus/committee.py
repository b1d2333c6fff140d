"""Committee selection and quorum arithmetic: who runs BFT in an epoch, and what counts as
a quorum.

Each epoch's committee is drawn from the staked operators, weighted by stake, with a seed
taken from committed state. The draw is a pure function of (stakes, seed, size): every honest
node computes the same committee with no message exchanged. Randomness comes from a SHA-256
counter-mode stream of the seed (never the `random` module, whose algorithm is not part of
our protocol), and candidates are walked in sorted order, so dict order never matters.

The seed: `committee_seed(prev, block_hash)` mixes the previous seed with the hash of a block
the committee certified at the end of the epoch. No single node chooses it; the one residual
influence, shared by every design without a VRF or threshold signature, is that the proposer
of that last block could try several block contents and publish the one whose hash it likes.
Each try costs it a whole proposal slot, and the seed it steers still feeds a stake-weighted
draw; a verifiable random beacon can replace `block_hash` later without changing the draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

COMMITTEE_SIZE_MAX = 1_000
SEED_BYTES = 32
_DRAW_DOMAIN = b"gpumesh/committee-draw/v1"
_SEED_DOMAIN = b"gpumesh/committee-seed/v1"


class NoEligibleStake(ValueError):
    """No candidate has positive stake: there is no one to form a committee from."""


@dataclass(frozen=True)
class Committee:
    """The members of one epoch's committee in draw order, with their voting weights (their
    stake). Quorums are counted by weight, never by heads."""

    members: tuple[bytes, ...]
    weights: tuple[int, ...]
    total: int
    _index: dict[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.members or len(self.members) != len(self.weights):
            raise ValueError("a committee needs members, each with one weight")
        if len(set(self.members)) != len(self.members):
            raise ValueError("committee members must be distinct")
        if any(w <= 0 for w in self.weights) or sum(self.weights) != self.total:
            raise ValueError("weights must be positive and sum to total")
        object.__setattr__(self, "_index", {m: i for i, m in enumerate(self.members)})

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def quorum_weight(self) -> int:
        """The least weight strictly above two thirds of the total: 3q > 2T."""
        return self.total * 2 // 3 + 1

    @property
    def f_tolerated(self) -> int:
        """The most Byzantine weight tolerated: T - q. Then the honest rest (>= q) can still
        form a quorum alone (liveness), and two quorums overlap in more than f (safety),
        since 2q - T > T - q follows from 3q > 2T. With n = 3f+1 equal weights this is f."""
        return self.total - self.quorum_weight

    @property
    def f_members(self) -> int:
        """The classic head count f = (n - 1) // 3, for equal weights."""
        return (self.size - 1) // 3

    def __contains__(self, node: object) -> bool:
        return node in self._index

    def weight_of_member(self, node: bytes) -> int:
        i = self._index.get(node)
        return 0 if i is None else self.weights[i]

    def weight_of(self, signers: Iterable[bytes]) -> int:
        """Total weight of the distinct members among `signers`; others count for nothing."""
        return sum(self.weight_of_member(s) for s in set(signers))

    def has_quorum(self, signers: Iterable[bytes]) -> bool:
        return self.weight_of(signers) >= self.quorum_weight

    def leader_for(self, view: int) -> bytes:
        """Round-robin over the members in draw order. The draw order is itself seeded, so
        who leads first changes every epoch; round-robin (not stake-weighted) keeps a slow or
        absent leader's cost to one view in n, and every member gets its turn."""
        if view < 0:
            raise ValueError("view must be non-negative")
        return self.members[view % self.size]


class _HashStream:
    """Uniform integers from SHA-256(domain || seed || counter): portable and reproducible."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0

    def _block(self) -> bytes:
        self._counter += 1
        counter = self._counter.to_bytes(8, "big")
        framed = len(self._seed).to_bytes(4, "big") + self._seed
        return hashlib.sha256(_DRAW_DOMAIN + framed + counter).digest()

    def below(self, bound: int) -> int:
        """Uniform in [0, bound): draw just enough bits and reject values >= bound (no modulo
        bias; fewer than two tries expected)."""
        if bound <= 0:
            raise ValueError("bound must be positive")
        bits = (bound - 1).bit_length()
        while True:
            raw = b"".join(self._block() for _ in range((bits + 255) // 256))
            value = int.from_bytes(raw, "big") >> (len(raw) * 8 - bits)
            if value < bound:
                return value


def pick_weighted(candidates: list[tuple[bytes, int]], ticket: int) -> int:
    """The index whose cumulative stake range holds `ticket` (0 <= ticket < total): candidate
    i owns exactly `stake_i` of the tickets, so selection odds equal stake shares exactly."""
    for i, (_, stake) in enumerate(candidates):
        if ticket < stake:
            return i
        ticket -= stake
    raise ValueError("ticket is not below the total stake")


def select_committee(stakes: Mapping[bytes, int], seed: bytes, size: int) -> Committee:
    """Draw `size` distinct members (or everyone, if fewer are staked), weighted by stake,
    without replacement. Zero or negative stakes are not candidates."""
    if not 1 <= size <= COMMITTEE_SIZE_MAX:
        raise ValueError(f"committee size must be 1..{COMMITTEE_SIZE_MAX}, got {size}")
    candidates = sorted((node, stake) for node, stake in stakes.items() if stake > 0)
    if not candidates:
        raise NoEligibleStake("no node has positive stake")
    stream = _HashStream(seed)
    remaining = sum(stake for _, stake in candidates)
    members: list[bytes] = []
    weights: list[int] = []
    while candidates and len(members) < size:
        node, stake = candidates.pop(pick_weighted(candidates, stream.below(remaining)))
        members.append(node)
        weights.append(stake)
        remaining -= stake
    return Committee(tuple(members), tuple(weights), sum(weights))


def committee_seed(prev_seed: bytes, block_hash: bytes) -> bytes:
    """The next epoch's seed: the previous one mixed with a block the committee certified."""
    return hashlib.sha256(_SEED_DOMAIN + prev_seed + block_hash).digest()
