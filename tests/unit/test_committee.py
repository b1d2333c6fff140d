"""Committee selection and quorum arithmetic: determinism, exact stake proportionality of the
draw, sizes 1..100, zero stake excluded, and the quorum edge cases (n = 3f+1, equal and
unequal stakes)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.committee import (
    COMMITTEE_SIZE_MAX,
    Committee,
    NoEligibleStake,
    _HashStream,
    committee_seed,
    pick_weighted,
    select_committee,
)


def node(i: int) -> bytes:
    return hashlib.sha256(b"test-committee/%d" % i).digest()


def seed(i: int) -> bytes:
    return hashlib.sha256(b"seed/%d" % i).digest()


def stakes_strategy(max_nodes: int = 30) -> st.SearchStrategy[dict[bytes, int]]:
    return st.dictionaries(
        st.integers(0, 200).map(node), st.integers(0, 10**12), min_size=1, max_size=max_nodes
    ).filter(lambda s: any(v > 0 for v in s.values()))


# ---------------------------------------------------------------------------------------------
# The draw


@settings(max_examples=60, deadline=None)
@given(stakes=stakes_strategy(), size=st.integers(1, 40), which=st.integers(0, 1000))
def test_the_draw_is_deterministic_and_ignores_dict_order(
    stakes: dict[bytes, int], size: int, which: int
) -> None:
    reversed_stakes = dict(reversed(list(stakes.items())))
    first = select_committee(stakes, seed(which), size)
    assert select_committee(reversed_stakes, seed(which), size) == first
    assert select_committee(dict(stakes), seed(which), size) == first


@settings(max_examples=60, deadline=None)
@given(stakes=stakes_strategy(), size=st.integers(1, 40), which=st.integers(0, 1000))
def test_members_are_distinct_staked_nodes_with_their_stake_as_weight(
    stakes: dict[bytes, int], size: int, which: int
) -> None:
    committee = select_committee(stakes, seed(which), size)
    staked = {n for n, s in stakes.items() if s > 0}
    assert committee.size == min(size, len(staked))
    assert len(set(committee.members)) == committee.size
    assert set(committee.members) <= staked
    assert committee.weights == tuple(stakes[m] for m in committee.members)
    assert committee.total == sum(committee.weights)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 10, 31, 64, 99, 100])
def test_every_size_up_to_100(size: int) -> None:
    stakes = {node(i): 1 + (i * 7919) % 1000 for i in range(150)}
    committee = select_committee(stakes, seed(size), size)
    assert committee.size == size
    assert committee.quorum_weight * 3 > committee.total * 2


def test_fewer_candidates_than_seats_seats_them_all() -> None:
    stakes = {node(i): 10 * (i + 1) for i in range(5)}
    committee = select_committee(stakes, seed(0), 100)
    assert sorted(committee.members) == sorted(stakes)


def test_zero_stake_is_never_drawn() -> None:
    stakes = {node(i): (0 if i % 2 else 5) for i in range(20)}
    for s in range(50):
        committee = select_committee(stakes, seed(s), 20)
        assert all(stakes[m] == 5 for m in committee.members)
        assert committee.size == 10
    with pytest.raises(NoEligibleStake):
        select_committee({node(1): 0, node(2): 0}, seed(0), 4)
    with pytest.raises(NoEligibleStake):
        select_committee({}, seed(0), 4)


@pytest.mark.parametrize("size", [0, COMMITTEE_SIZE_MAX + 1])
def test_size_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(ValueError):
        select_committee({node(1): 1}, seed(0), size)


def test_each_candidate_owns_exactly_its_stake_in_tickets() -> None:
    """The weighted pick, over every possible ticket, selects each candidate exactly
    `stake` times: proportionality is exact, not approximate."""
    candidates = [(node(i), stake) for i, stake in enumerate([1, 5, 2, 9, 1, 13])]
    total = sum(stake for _, stake in candidates)
    counts = [0] * len(candidates)
    for ticket in range(total):
        counts[pick_weighted(candidates, ticket)] += 1
    assert counts == [stake for _, stake in candidates]
    with pytest.raises(ValueError):
        pick_weighted(candidates, total)


def test_the_hash_stream_is_uniform_and_in_range() -> None:
    stream = _HashStream(seed(1))
    draws = [stream.below(6) for _ in range(6000)]
    assert set(draws) == set(range(6))
    # fixed seed: the counts are exact; each within 5 standard deviations (~ 144) of 1000
    assert all(abs(draws.count(v) - 1000) < 144 for v in range(6))
    big = _HashStream(seed(2))
    assert all(0 <= big.below(3**200) < 3**200 for _ in range(50))
    with pytest.raises(ValueError):
        stream.below(0)


def test_selection_odds_follow_stake_over_many_seeds() -> None:
    """Size 1: P(node i) = stake_i / total. Fixed seeds make the counts exact; they must sit
    within 5 standard deviations of the expectation."""
    stakes = {node(i): stake for i, stake in enumerate([1, 2, 3, 4])}
    trials = 4000
    counts = dict.fromkeys(stakes, 0)
    for s in range(trials):
        counts[select_committee(stakes, seed(s), 1).members[0]] += 1
    for n, stake in stakes.items():
        p = stake / 10
        sd = (trials * p * (1 - p)) ** 0.5
        assert abs(counts[n] - trials * p) < 5 * sd, (counts, n)


def test_a_heavy_staker_is_drawn_more_often_without_replacement() -> None:
    stakes = {node(0): 1000, **{node(i): 1 for i in range(1, 11)}}
    seated = sum(node(0) in select_committee(stakes, seed(s), 3) for s in range(200))
    assert seated >= 195  # it holds ~99% of the stake; each draw seats it with p >= 0.99


def test_committee_seed_mixes_both_inputs() -> None:
    a = committee_seed(seed(1), b"\x01" * 32)
    assert a == committee_seed(seed(1), b"\x01" * 32)
    assert a != committee_seed(seed(1), b"\x02" * 32)
    assert a != committee_seed(seed(2), b"\x01" * 32)
    assert len(a) == 32


# ---------------------------------------------------------------------------------------------
# Quorum arithmetic


@pytest.mark.parametrize("f", range(0, 34))
def test_equal_stakes_n_3f_plus_1(f: int) -> None:
    n = 3 * f + 1
    members = tuple(node(i) for i in range(n))
    unit = Committee(members, (1,) * n, n)
    assert (unit.quorum_weight, unit.f_tolerated, unit.f_members) == (2 * f + 1, f, f)
    heavy = Committee(members, (7,) * n, 7 * n)  # equal stakes of any size: same head counts
    assert heavy.has_quorum(members[: 2 * f + 1])
    assert not heavy.has_quorum(members[: 2 * f])
    assert heavy.total - heavy.weight_of(members[:f]) >= heavy.quorum_weight
    assert heavy.f_members == f and 7 * f <= heavy.f_tolerated < 7 * (f + 1)


@pytest.mark.parametrize(
    ("total", "quorum"),
    [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5), (7, 5), (9, 7), (10, 7), (100, 67)],
)
def test_quorum_is_the_least_weight_above_two_thirds(total: int, quorum: int) -> None:
    committee = Committee((node(0),), (total,), total)
    assert committee.quorum_weight == quorum
    assert 3 * quorum > 2 * total >= 3 * (quorum - 1)
    assert committee.f_tolerated == total - quorum


def test_unequal_stakes_count_weight_not_heads() -> None:
    big, small = node(0), [node(i) for i in range(1, 4)]
    committee = Committee((big, *small), (70, 10, 10, 10), 100)
    assert committee.quorum_weight == 67
    assert committee.has_quorum([big])
    assert not committee.has_quorum(small)
    assert committee.f_tolerated == 33
    assert committee.f_members == 1


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.integers(1, 1000), min_size=1, max_size=12),
    a=st.sets(st.integers(0, 11)),
    b=st.sets(st.integers(0, 11)),
)
def test_two_quorums_overlap_in_more_than_f(weights: list[int], a: set[int], b: set[int]) -> None:
    members = tuple(node(i) for i in range(len(weights)))
    committee = Committee(members, tuple(weights), sum(weights))
    qa = [members[i] for i in a if i < len(members)]
    qb = [members[i] for i in b if i < len(members)]
    if committee.has_quorum(qa) and committee.has_quorum(qb):
        assert committee.weight_of(set(qa) & set(qb)) > committee.f_tolerated
    honest = committee.total - committee.f_tolerated
    assert honest >= committee.quorum_weight


def test_signers_outside_or_repeated_count_once_or_not_at_all() -> None:
    committee = Committee((node(0), node(1), node(2), node(3)), (1, 1, 1, 1), 4)
    assert committee.weight_of([node(0), node(0), node(0)]) == 1
    assert not committee.has_quorum([node(0), node(0), node(0), node(9)])
    assert committee.has_quorum([node(0), node(1), node(2), node(9)])
    assert node(9) not in committee and node(1) in committee
    assert committee.weight_of_member(node(9)) == 0


def test_leader_rotates_through_every_member() -> None:
    stakes = {node(i): i + 1 for i in range(7)}
    committee = select_committee(stakes, seed(3), 7)
    leaders = [committee.leader_for(v) for v in range(14)]
    assert leaders[:7] == list(committee.members)
    assert leaders[7:] == leaders[:7]
    with pytest.raises(ValueError):
        committee.leader_for(-1)


@pytest.mark.parametrize(
    ("members", "weights", "total"),
    [
        ((), (), 0),
        ((b"a",), (1, 2), 3),
        ((b"a", b"a"), (1, 1), 2),
        ((b"a",), (0,), 0),
        ((b"a",), (2,), 3),
    ],
)
def test_malformed_committees_are_refused(
    members: tuple[bytes, ...], weights: tuple[int, ...], total: int
) -> None:
    with pytest.raises(ValueError):
        Committee(members, weights, total)
