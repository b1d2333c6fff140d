"""Prices per GPU class: direction, bounds, clamps, rounding and the canonical encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.market.pricing import (
    PriceBook,
    PricingParams,
    max_step,
    next_price,
    next_prices,
    price_step,
)
from p2p.errors import DecodeError, InvalidRecord

P = PricingParams(
    target_utilisation_permille=800,
    max_step_bps=1_250,
    floor_per_gpu_hour=100,
    ceiling_per_gpu_hour=10_000_000,
)
BOOK = PriceBook({"h100": 1_000_000, "a100": 400_000, "rtx4090": 50_000})


def test_full_class_rises_by_exactly_the_max_step() -> None:
    assert next_price(1_000_000, 10, 10, P) == 1_125_000


def test_surge_rises_monotonically_and_bounded_per_step() -> None:
    price = 1_000_000
    for _ in range(30):
        new = next_price(price, 50, 10, P)
        assert price < new <= price + max_step(price, P) or new == P.ceiling_per_gpu_hour
        price = new
    assert price == P.ceiling_per_gpu_hour


def test_idle_class_falls_by_the_max_step_until_the_floor() -> None:
    assert next_price(1_000_000, 0, 10, P) == 875_000
    price = 1_000_000
    for _ in range(200):
        new = next_price(price, 0, 10, P)
        assert new <= price
        price = new
    assert price == P.floor_per_gpu_hour


def test_at_target_the_price_stands_still() -> None:
    assert price_step(1_000_000, 8, 10, P) == 0
    assert next_price(1_000_000, 80, 100, P) == 1_000_000


def test_between_target_and_full_the_step_is_proportional() -> None:
    # util 900 is halfway from 800 to 1000: half the max step
    assert price_step(1_000_000, 9, 10, P) == 62_500
    # util 400 is halfway from 800 to 0: half the max step down
    assert price_step(1_000_000, 4, 10, P) == -62_500


def test_no_supply_leaves_the_price_unchanged() -> None:
    assert next_price(1_000_000, 7, 0, P) == 1_000_000
    assert next_price(1_000_000, 0, 0, P) == 1_000_000


def test_rounding_up_for_rises_and_towards_zero_for_falls() -> None:
    # 3 * 1250 * 100 / (200 * 10000 * 10) exact = 0.01875: a rise rounds to 1, a fall to 0
    assert price_step(3, 9, 10, P) == 1
    assert price_step(3, 7, 10, P) == 0


def test_floor_and_ceiling_clamp() -> None:
    assert next_price(50, 0, 10, P) == 100  # below the floor lifts to it
    assert next_price(9_999_999, 10, 10, P) == 10_000_000
    assert next_price(20_000_000, 0, 10, P) == 10_000_000


def test_next_prices_moves_each_class_on_its_own_counts() -> None:
    new = next_prices(BOOK, {"h100": 20, "a100": 0}, {"h100": 10, "a100": 10, "other": 5}, P)
    assert isinstance(new, PriceBook)
    assert new["h100"] == 1_125_000
    assert new["a100"] == 350_000
    assert new["rtx4090"] == 50_000  # no supply reported
    assert "other" not in new
    assert all(type(v) is int for v in new.values())


def test_bad_counts_and_params_are_refused() -> None:
    with pytest.raises(ValueError, match="h100"):
        next_prices(BOOK, {"h100": -1}, {}, P)
    with pytest.raises(ValueError, match="h100"):
        next_prices(BOOK, {"h100": 1.5}, {}, P)  # type: ignore[dict-item]
    with pytest.raises(InvalidRecord, match="target_utilisation_permille"):
        PricingParams(target_utilisation_permille=1_000)
    with pytest.raises(InvalidRecord, match="floor_per_gpu_hour"):
        PricingParams(floor_per_gpu_hour=0)
    with pytest.raises(InvalidRecord, match="ceiling_per_gpu_hour"):
        PricingParams(floor_per_gpu_hour=10, ceiling_per_gpu_hour=9)
    with pytest.raises(InvalidRecord, match="max_step_bps"):
        PricingParams(max_step_bps=0)


def test_price_book_is_immutable_sorted_and_validated() -> None:
    assert list(BOOK) == ["a100", "h100", "rtx4090"]
    with pytest.raises(TypeError):
        BOOK["h100"] = 1  # type: ignore[index]
    with pytest.raises(ValueError, match="printable"):
        PriceBook({"h 100": 1})
    with pytest.raises(ValueError, match="price"):
        PriceBook({"h100": 0})
    assert BOOK.listing("l4", 7)["l4"] == 7 and "l4" not in BOOK


def test_encoding_is_canonical_and_round_trips() -> None:
    same = PriceBook({"rtx4090": 50_000, "h100": 1_000_000, "a100": 400_000})
    assert same.encode() == BOOK.encode()
    assert PriceBook.decode(BOOK.encode()) == BOOK
    assert PricingParams.from_wire(P.to_wire()) == P


def test_unsorted_encoding_is_refused() -> None:
    from p2p import codec

    with pytest.raises(DecodeError, match="sorted"):
        PriceBook.decode(codec.pack([[b"h100", 1], [b"a100", 2]]))


params_st = st.builds(
    PricingParams,
    target_utilisation_permille=st.integers(1, 999),
    max_step_bps=st.integers(1, 5_000),
    floor_per_gpu_hour=st.integers(1, 1_000),
    ceiling_per_gpu_hour=st.integers(1_000, 10**15),
)


@settings(max_examples=300, deadline=None)
@given(
    params=params_st,
    price=st.integers(1, 10**15),
    demand=st.integers(0, 10**6),
    supply=st.integers(0, 10**6),
)
def test_step_is_bounded_deterministic_and_never_negative(
    params: PricingParams, price: int, demand: int, supply: int
) -> None:
    step = price_step(price, demand, supply, params)
    assert abs(step) <= max_step(price, params)
    new = next_price(price, demand, supply, params)
    assert type(new) is int
    assert new >= params.floor_per_gpu_hour >= 1
    assert new <= params.ceiling_per_gpu_hour
    assert new == next_price(price, demand, supply, params)
    if params.floor_per_gpu_hour <= price <= params.ceiling_per_gpu_hour:
        assert abs(new - price) <= max_step(price, params)
    util_over = (
        supply > 0 and min(demand, supply) * 1000 > params.target_utilisation_permille * supply
    )
    util_under = (
        supply > 0 and min(demand, supply) * 1000 < params.target_utilisation_permille * supply
    )
    if util_over:
        assert step > 0
    elif not util_under:
        assert step == 0
    else:
        assert step <= 0


@settings(max_examples=100, deadline=None)
@given(
    price=st.integers(1, 10**12),
    supply=st.integers(1, 1_000),
    d1=st.integers(0, 2_000),
    d2=st.integers(0, 2_000),
)
def test_more_demand_never_gives_a_lower_price(price: int, supply: int, d1: int, d2: int) -> None:
    lo, hi = sorted((d1, d2))
    assert next_price(price, lo, supply, P) <= next_price(price, hi, supply, P)
