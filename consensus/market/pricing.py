"""Per-GPU-class prices that follow utilisation, in the manner of EIP-1559's base fee.

Every GPU class (say "h100-80g") has one price, in base units per GPU-hour, and each block
moves it towards the level where demand meets a target share of the supply: up while demand
outstrips it, down while capacity sits idle. The move per block is bounded (`max_step_bps`),
so no single block's demand, honest or staged, can jolt a price further than one step, and a
price that has run away takes many blocks of sustained demand, which is costly to fake.

Arithmetic is integer only and the rounding is part of the protocol: every node must land on
the same price, or the state roots part. The step for a class with supply S, demand D,
target T (permille) and price P is

    util   = min(D * 1000 / S, 1000)            (permille, kept as the exact fraction)
    up     = P * max_step_bps * (util - T) / ((1000 - T) * 10000)     when util > T
    down   = P * max_step_bps * (T - util) / (T * 10000)              when util < T

so a fully used class (demand >= supply) rises by exactly the max step and an idle class
(D = 0) falls by exactly the max step; at the target the price stands still. Demand beyond
the supply counts as full use: unmet demand is a signal, but it cannot buy more than one
step per block. Increases round up (a small price can still rise: any demand above target
moves it by at least one unit) and decreases round towards zero (a fall never overshoots its
exact value), so |step| <= ceil(P * max_step_bps / 10000). The result is then clamped to
[floor, ceiling]; the floor is at least 1, so a price never reaches zero and stalls there.

A class with no supply keeps its price: utilisation is undefined, and there is nothing to
rent, so neither direction carries information. Demand or supply reported for a class the
book does not list is ignored: which classes exist is decided where the book is made
(genesis or a listing), never by whoever reports counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from p2p import codec
from p2p.errors import DecodeError
from p2p.wire import U64_MAX, Struct, UInt

BPS = 10_000
"""Basis points in one whole."""
PERMILLE = 1_000
"""Utilisation is measured in permille of supply."""
GPU_CLASS_BYTES_MAX = 64
"""Longest class name: names go into every state root, so they are kept short."""
CLASSES_MAX = 1_024
"""Most classes one book may hold: bounds the work of a block and the size of the root."""
STEP_BPS_MAX = 5_000
"""No parameter set may move a price by more than half in one block."""


def _param(default: int, maximum: int = U64_MAX) -> Any:
    return dataclasses.field(default=default, metadata={"wire": UInt(maximum)})


@dataclass(frozen=True)
class PricingParams(Struct):
    """How prices follow utilisation. A wire struct, like the ledger's parameters, so a node
    with different knobs disagrees on the state root at once rather than drifting later."""

    target_utilisation_permille: int = _param(800, PERMILLE)
    """The utilisation at which a price stands still; below it prices fall, above it rise.
    Under 1000 so that a full class always signals scarcity."""
    max_step_bps: int = _param(1_250, STEP_BPS_MAX)
    """The most a price moves in one block (1250 = 12.5%, as EIP-1559)."""
    floor_per_gpu_hour: int = _param(1)
    ceiling_per_gpu_hour: int = _param(U64_MAX)

    def invariant_violation(self) -> str | None:
        if not 1 <= self.target_utilisation_permille <= PERMILLE - 1:
            return f"target_utilisation_permille must be 1..{PERMILLE - 1}"
        if self.max_step_bps == 0:
            return "max_step_bps must be at least 1"
        if self.floor_per_gpu_hour == 0:
            return "floor_per_gpu_hour must be at least 1 (a zero price could never rise)"
        if self.ceiling_per_gpu_hour < self.floor_per_gpu_hour:
            return "ceiling_per_gpu_hour must be at least floor_per_gpu_hour"
        return None


def check_gpu_class(name: object) -> str:
    """Return `name` if it is a valid class name (printable ASCII, 1..64 bytes, no spaces),
    else raise ValueError: names are keys of consensus state and must encode one way only."""
    if not isinstance(name, str):
        raise ValueError(f"gpu class must be a str, got {type(name).__name__}")
    if not 1 <= len(name) <= GPU_CLASS_BYTES_MAX:
        raise ValueError(f"gpu class must be 1..{GPU_CLASS_BYTES_MAX} characters: {name!r}")
    if not all("!" <= ch <= "~" for ch in name):
        raise ValueError(f"gpu class must be printable ASCII without spaces: {name!r}")
    return name


class PriceBook(Mapping[str, int]):
    """An immutable mapping gpu_class -> price (base units per GPU-hour), iterated in sorted
    order so that encodings and any walk over it never depend on insertion order."""

    __slots__ = ("_prices",)

    def __init__(self, prices: Mapping[str, int] | None = None) -> None:
        items = dict(prices or {})
        if len(items) > CLASSES_MAX:
            raise ValueError(f"a price book holds at most {CLASSES_MAX} classes")
        for name, price in items.items():
            check_gpu_class(name)
            if type(price) is not int or not 1 <= price <= U64_MAX:
                raise ValueError(f"price of {name!r} must be an int in 1..2**64-1: {price!r}")
        self._prices: dict[str, int] = {k: items[k] for k in sorted(items)}

    def __getitem__(self, gpu_class: str) -> int:
        return self._prices[gpu_class]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PriceBook):
            return self._prices == other._prices
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._prices.items()))

    def __repr__(self) -> str:
        return f"PriceBook({self._prices!r})"

    def listing(self, gpu_class: str, price: int) -> PriceBook:
        """A new book with `gpu_class` added (or re-priced) at `price`."""
        return PriceBook({**self._prices, gpu_class: price})

    def to_wire(self) -> list[codec.Value]:
        """[[class_bytes, price], ...] sorted by class: the one encoding of this book."""
        return [[name.encode("ascii"), price] for name, price in self._prices.items()]

    def encode(self) -> bytes:
        """Canonical bytes for the state root."""
        return codec.pack(self.to_wire())

    @classmethod
    def from_wire(cls, raw: codec.Value) -> PriceBook:
        """Decode a book, refusing anything but the canonical (strictly sorted) form."""
        if not isinstance(raw, list):
            raise DecodeError("price book: expected an array")
        prices: dict[str, int] = {}
        previous: bytes | None = None
        for entry in raw:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise DecodeError("price book: each entry must be [class, price]")
            name, price = entry
            if not isinstance(name, bytes) or not isinstance(price, int):
                raise DecodeError("price book: entry must be [bytes, int]")
            if previous is not None and name <= previous:
                raise DecodeError("price book: classes must be strictly sorted")
            previous = name
            try:
                prices[name.decode("ascii")] = price
            except UnicodeDecodeError:
                raise DecodeError("price book: class is not ASCII") from None
        try:
            return cls(prices)
        except ValueError as exc:
            raise DecodeError(f"price book: {exc}") from None

    @classmethod
    def decode(cls, data: bytes) -> PriceBook:
        return cls.from_wire(codec.unpack(data))


def max_step(price: int, params: PricingParams) -> int:
    """The most `price` can move in one block: ceil(price * max_step_bps / 10000)."""
    return -(-price * params.max_step_bps // BPS)


def price_step(price: int, demand: int, supply: int, params: PricingParams) -> int:
    """The signed change of `price` for one block, before the floor/ceiling clamp (see the
    module docstring for the formula and its rounding). Zero when there is no supply."""
    if demand < 0 or supply < 0:
        raise ValueError("demand and supply must be non-negative")
    if supply == 0:
        return 0
    target = params.target_utilisation_permille
    # util - target as the exact fraction (used * 1000 - target * supply) / supply, so no
    # rounding happens before the single division at the end.
    used = min(demand, supply)
    excess = used * PERMILLE - target * supply
    if excess > 0:
        num = price * params.max_step_bps * excess
        den = (PERMILLE - target) * BPS * supply
        return -(-num // den)
    if excess < 0:
        num = price * params.max_step_bps * -excess
        den = target * BPS * supply
        return -(num // den)
    return 0


def next_price(price: int, demand: int, supply: int, params: PricingParams) -> int:
    """One class's price after one block, clamped to [floor, ceiling]."""
    moved = price + price_step(price, demand, supply, params)
    return max(params.floor_per_gpu_hour, min(params.ceiling_per_gpu_hour, moved))


def next_prices(
    book: PriceBook,
    demand_gpus_by_class: Mapping[str, int],
    supply_gpus_by_class: Mapping[str, int],
    params: PricingParams,
) -> PriceBook:
    """Every listed class's price after one block. A class absent from a mapping counts as
    0 there; classes the book does not list are ignored (see the module docstring)."""
    for counts in (demand_gpus_by_class, supply_gpus_by_class):
        for name, count in counts.items():
            if type(count) is not int or count < 0:
                raise ValueError(f"GPU count for {name!r} must be a non-negative int: {count!r}")
    return PriceBook(
        {
            name: next_price(
                price,
                demand_gpus_by_class.get(name, 0),
                supply_gpus_by_class.get(name, 0),
                params,
            )
            for name, price in book.items()
        }
    )
