"""The simulated network on its own: latencies, the mesh, partitions, one-way and cut links,
loss, node state over time, validators, silent nodes, and duplicates."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest

from sim_harness.faults import (
    CutLink,
    Fault,
    Heal,
    Loss,
    Nodes,
    OneWayPartition,
    Partition,
)
from sim_harness.network import (
    REGIONS,
    LinkKnobs,
    LinkSchedule,
    Mesh,
    Network,
    NodeSchedule,
    base_latency_ms,
    build_mesh,
    mesh_from_adjacency,
)

OPEN = (-(10**12), 10**12)
"""A validator window every node passes."""


def names_of(n: int) -> list[str]:
    return [f"a{i:03d}" if i < n // 2 else f"b{i:03d}" for i in range(n)]


def network(
    mesh: Mesh,
    faults: Sequence[Fault] = (),
    *,
    regions: Sequence[str] | None = None,
    knobs: LinkKnobs | None = None,
    nodes: NodeSchedule | None = None,
    base_loss: float = 0.0,
    seed: int = 1,
) -> Network:
    names = names_of(mesh.n)
    return Network(
        mesh,
        regions or ["eu-west"] * mesh.n,
        knobs or LinkKnobs(jitter_ms=0),
        LinkSchedule.from_faults(faults, mesh, names, base_loss),
        nodes or NodeSchedule.empty(mesh.n),
        np.random.Generator(np.random.PCG64(seed)),
    )


def reached(net: Network, src: int, t0: int = 0, accept: tuple[int, int] | None = OPEN) -> set[int]:
    return {v for _, v in net.spread(src, t0, 400, accept).arrivals}


def group(names: Sequence[str], prefix: str) -> Nodes:
    return Nodes(tuple(x for x in names if x.startswith(prefix)))


def two_sides(n: int = 40) -> Mesh:
    """Two rings, a (0..n/2-1) and b (n/2..n-1), joined by n/2 links across."""
    h = n // 2
    adj = [{(i + 1) % h} if i < h else {h + (i + 1 - h) % h} for i in range(n)]
    for i in range(h):
        adj[i].add(h + i)
    return mesh_from_adjacency(adj)


# ---------------------------------------------------------------------------------------------
# latency and mesh


def test_latency_matrix_is_symmetric_and_in_range() -> None:
    for a in REGIONS:
        assert 1 <= base_latency_ms(a, a) <= 5  # same region: a few ms
        for b in REGIONS:
            assert base_latency_ms(a, b) == base_latency_ms(b, a)
            if a != b:
                assert 5 <= base_latency_ms(a, b) <= 150
    assert base_latency_ms("eu-west", "eu-central") < 20
    assert 30 <= base_latency_ms("eu-west", "us-east") <= 100  # cross-Atlantic: tens of ms
    assert base_latency_ms("eu-west", "au-east") >= 120


@pytest.mark.parametrize(("n", "degree"), [(1, 2), (2, 2), (3, 4), (7, 6), (50, 4), (400, 6)])
def test_mesh_degree_is_bounded_and_the_mesh_connected(n: int, degree: int) -> None:
    mesh = build_mesh(n, degree, random.Random(n * 31 + degree))
    degrees = [len(mesh.neighbours(u)) for u in range(n)]
    assert max(degrees, default=0) <= degree
    assert mesh.is_connected()
    for u in range(n):
        assert u not in mesh.neighbours(u)
        assert all(u in mesh.neighbours(v) for v in mesh.neighbours(u))
    if n >= 50:  # the fill-up gets almost every node to the full degree
        assert sum(degrees) / n >= degree - 0.5


def test_backbone_stays_connected_whatever_the_others_do() -> None:
    rng = random.Random(5)
    outsiders = set(rng.sample(range(200), 40))
    backbone = [i for i in range(200) if i not in outsiders]
    mesh = build_mesh(200, 3, random.Random(9), backbone=backbone)
    assert mesh.is_connected(backbone)


def test_same_seed_same_mesh() -> None:
    assert build_mesh(100, 6, random.Random(3)) == build_mesh(100, 6, random.Random(3))
    assert build_mesh(100, 6, random.Random(3)) != build_mesh(100, 6, random.Random(4))


# ---------------------------------------------------------------------------------------------
# spreading


def test_a_message_takes_hops_and_arrives_by_the_fastest_path() -> None:
    line = mesh_from_adjacency([{1}, {2}, {3}, set()])  # 0 - 1 - 2 - 3
    regions = ["eu-west", "us-east", "us-east", "ap-northeast"]
    net = network(line, regions=regions)
    spread = net.spread(0, 1_000, 400, OPEN)
    expect, t = [], 1_000
    for a, b in ((0, 1), (1, 2), (2, 3)):
        t += base_latency_ms(regions[a], regions[b])
        expect.append((t, b))
    assert spread.arrivals == expect
    ring = mesh_from_adjacency([{1, 3}, {2}, {3}, set()])  # 0-3 is a direct, faster way
    arrivals = dict(
        (v, t) for t, v in network(ring, regions=regions).spread(0, 0, 400, OPEN).arrivals
    )
    assert arrivals[3] == base_latency_ms("eu-west", "ap-northeast")


def test_bandwidth_adds_transfer_time_to_large_messages() -> None:
    pair = mesh_from_adjacency([{1}, set()])
    slow = network(pair, knobs=LinkKnobs(jitter_ms=0, bandwidth_mbps=1))
    ((t, _),) = slow.spread(0, 0, 125_000, OPEN).arrivals  # 1 Mbit over 1 Mbit/s: one second
    assert t == base_latency_ms("eu-west", "eu-west") + 1_000


def test_partition_blocks_across_groups_until_the_heal() -> None:
    mesh, names = two_sides(), names_of(40)
    net = network(mesh, [Partition(10_000, None, (group(names, "a"),)), Heal(20_000)])
    side_a = set(range(20))
    assert reached(net, 0, 0) == set(range(1, 40))
    assert reached(net, 0, 12_000) == side_a - {0}  # unnamed nodes form the other group
    assert not net.connected(0, 20, 12_000) and net.connected(0, 1, 12_000)
    assert reached(net, 0, 20_000) == set(range(1, 40))


def test_one_way_partition_blocks_one_direction_only() -> None:
    mesh, names = two_sides(), names_of(40)
    net = network(mesh, [OneWayPartition(0, None, group(names, "a"), group(names, "b"))])
    assert reached(net, 0) == set(range(1, 20))  # from a: no b node hears it
    assert reached(net, 39) == set(range(39))  # from b: everyone
    assert net.blocked(0, 20, 0) and not net.blocked(20, 0, 0)
    assert net.connected(0, 20, 0)  # the connection stays up; messages one way are dropped


def test_cut_links_and_severed_links_carry_nothing() -> None:
    line = mesh_from_adjacency([{1}, {2}, set()])
    names = names_of(3)
    net = network(line, [CutLink(0, None, Nodes((names[1],)), Nodes((names[2],)))])
    assert reached(net, 0) == {1}
    assert not net.connected(1, 2, 0) and not net.connected(2, 1, 0)
    other = network(line)
    other.sever(0, 1)
    assert reached(other, 0) == set() and reached(other, 2) == {1}


def test_a_partition_that_starts_in_flight_stops_the_message() -> None:
    line = mesh_from_adjacency([{1}, {2}, set()])
    names = names_of(3)
    regions = ["eu-west", "au-east", "eu-west"]  # 147 ms per hop
    cut = [CutLink(100, None, Nodes((names[1],)), Nodes((names[2],)))]
    assert reached(network(line, regions=regions), 0) == {1, 2}
    assert reached(network(line, cut, regions=regions), 0) == {1}


def test_loss_rate_is_honoured_over_many_draws() -> None:
    mesh = build_mesh(30, 6, random.Random(1))
    net = network(mesh, base_loss=0.1, seed=77)
    landed = lost = 0
    for i in range(2_000):
        out = net.direct(i % 30, 0, 300)
        landed, lost = landed + len(out.arrivals), lost + out.lost
    rate = lost / (landed + lost)
    assert 0.09 <= rate <= 0.11
    again = network(mesh, base_loss=0.1, seed=77)
    assert sum(again.direct(i % 30, 0, 300).lost for i in range(2_000)) == lost  # same seed


def test_loss_fault_applies_to_links_of_the_chosen_nodes() -> None:
    mesh = mesh_from_adjacency([{1, 2}, set(), set()])
    names = names_of(3)
    net = network(mesh, [Loss(0, Nodes((names[1],)), None, 1.0)])
    assert reached(net, 0) == {2}


def test_crashed_or_paused_nodes_neither_receive_nor_forward() -> None:
    line = mesh_from_adjacency([{1}, {2}, set()])
    nodes = NodeSchedule.empty(3)
    nodes.down[1] = [(5_000, 8_000)]
    net = network(line, nodes=nodes)
    assert reached(net, 0, 0) == {1, 2}
    assert reached(net, 0, 6_000) == set()
    assert reached(net, 0, 8_000) == {1, 2}
    assert net.spread(0, 6_000, 400, OPEN).down == 1


def test_a_node_whose_validator_rejects_neither_delivers_nor_forwards() -> None:
    line = mesh_from_adjacency([{1}, {2}, set()])
    net = network(line)
    spread = net.spread(0, 0, 400, None)
    assert spread.arrivals == [] and spread.rejected == 1
    # a node whose clock runs 5 s fast sees the message as outside its window
    nodes = NodeSchedule.empty(3)
    nodes.skews[1] = [(0, 5_000)]
    skewed = network(line, nodes=nodes)
    assert reached(skewed, 0, 0, (-10_000, 3_000)) == set()
    assert reached(skewed, 0, 0, (-10_000, 10_000)) == {1, 2}


def test_silent_nodes_receive_but_do_not_forward() -> None:
    line = mesh_from_adjacency([{1}, {2}, set()])
    nodes = NodeSchedule.empty(3)
    nodes.silent_from[1] = 1_000
    net = network(line, nodes=nodes)
    assert reached(net, 0, 0) == {1, 2}
    assert reached(net, 0, 1_000) == {1}


def test_duplicates_arrive_after_the_first_copy() -> None:
    mesh = build_mesh(20, 4, random.Random(4))
    net = network(mesh, knobs=LinkKnobs(jitter_ms=5, duplicate=1.0))
    spread = net.spread(0, 0, 400, OPEN)
    first = dict((v, t) for t, v in spread.arrivals)
    assert len(spread.duplicates) == len(spread.arrivals) == 19
    assert all(t > first[v] for t, v in spread.duplicates)


def test_jitter_and_reorder_stay_within_bounds() -> None:
    pair = mesh_from_adjacency([{1}, set()])
    base = base_latency_ms("eu-west", "eu-west")
    net = network(pair, knobs=LinkKnobs(jitter_ms=10, reorder=0.5, reorder_ms=200))
    times = [net.spread(0, 0, 400, OPEN).arrivals[0][0] for _ in range(500)]
    assert min(times) >= base and max(times) <= base + 10 + 200
    assert len(set(times)) > 50 and sum(t > base + 10 for t in times) > 100
