"""The compiled spread (`sim_harness.spread_kernel`) against the hop-by-hop Python pass that
defines the model: for the same message key they must give the same arrivals, duplicates and
hop counts, on random meshes with partitions, cut and one-way links, loss, delays, reordering,
crashes, pauses, clock skews, silent nodes and validator windows, published at times before,
inside and across those changes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sim_harness.faults import (
    CutLink,
    Delay,
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
    Network,
    NodeSchedule,
    build_mesh,
)
from sim_harness.spread_kernel import message_key


def _names(n: int) -> list[str]:
    return [f"n{i:03d}" for i in range(n)]


def _pick(rng: random.Random, names: list[str], k: int) -> Nodes:
    return Nodes(tuple(sorted(rng.sample(names, k))))


def _faults(rng: random.Random, names: list[str]) -> list[Fault]:
    """A random timeline of network faults over the first 20 s."""
    out: list[Fault] = []
    t = 0
    for _ in range(rng.randint(0, 6)):
        t += rng.randint(200, 4_000)
        k = max(1, len(names) // 4)
        kind = rng.randrange(6)
        if kind == 0:
            half = rng.sample(names, len(names) // 2)
            rest = [x for x in names if x not in half]
            out.append(Partition(t, None, (Nodes(tuple(sorted(half))), Nodes(tuple(rest)))))
        elif kind == 1:
            out.append(CutLink(t, None, _pick(rng, names, k), _pick(rng, names, k)))
        elif kind == 2:
            out.append(OneWayPartition(t, None, _pick(rng, names, k), _pick(rng, names, k)))
        elif kind == 3:
            out.append(Delay(t, nodes=_pick(rng, names, k), by_ms=rng.choice([30, 400, 3_000])))
        elif kind == 4:
            out.append(Loss(t, nodes=_pick(rng, names, k), rate=rng.choice([0.2, 1.0])))
        else:
            out.append(Heal(t))
    return out


def _nodes(rng: random.Random, n: int) -> NodeSchedule:
    """Random down spans, clock skews and silent nodes."""
    sched = NodeSchedule.empty(n)
    for v in range(n):
        r = rng.random()
        if r < 0.15:
            start = rng.randint(0, 15_000)
            end = start + rng.randint(1, 6_000) if rng.random() < 0.8 else 1 << 62
            sched.down[v] = [(start, end)]
        elif r < 0.25:
            sched.skews[v] = [(rng.randint(0, 10_000), rng.choice([-9_000, -200, 300, 8_000]))]
        elif r < 0.32:
            sched.silent_from[v] = rng.randint(0, 12_000)
    return sched


def _pair(seed: int) -> tuple[Network, Network, int]:
    rng = random.Random(seed)
    n = rng.choice([5, 12, 40, 150])
    names = _names(n)
    mesh = build_mesh(n, rng.choice([2, 4, 6]), random.Random(seed))
    faults = _faults(rng, names)
    regions = [rng.choice(REGIONS) for _ in range(n)]
    knobs = LinkKnobs(
        jitter_ms=rng.choice([0, 5, 20]),
        duplicate=rng.choice([0.0, 0.3]),
        reorder=rng.choice([0.0, 0.2]),
        reorder_ms=rng.choice([50, 2_000]),
    )
    base_loss = rng.choice([0.0, 0.05, 0.5])
    nodes = _nodes(rng, n)
    nets = []
    for compiled in (True, False):
        net = Network(
            mesh,
            regions,
            knobs,
            LinkSchedule.from_faults(faults, mesh, names, base_loss),
            nodes,
            np.random.Generator(np.random.PCG64(seed)),
        )
        net.compiled = compiled
        nets.append(net)
    return nets[0], nets[1], n


@pytest.mark.parametrize("seed", range(60))
def test_the_compiled_pass_gives_the_hop_by_hop_answer(seed: int) -> None:
    fast, slow, n = _pair(seed)
    rng = random.Random(seed * 7 + 1)
    for _ in range(40):
        src, t0 = rng.randrange(n), rng.randint(0, 25_000)
        window = rng.choice(
            [None, (-(10**9), 10**9), (t0 - 500, t0 + 300), (t0 - 9_000, t0 + 9_000)]
        )
        size = rng.choice([300, 400_000])
        if rng.random() < 0.1:  # a node severs a link mid-run; both networks learn it
            u = rng.randrange(n)
            for w in fast.mesh.neighbours(u)[:1]:
                fast.sever(u, w)
                slow.sever(u, w)
        key = message_key(seed, src, t0)
        assert fast._spread_compiled(src, t0, size, window, key) is not None  # no fallback
        a, b = fast.spread(src, t0, size, window, key), slow.spread(src, t0, size, window, key)
        assert a.arrivals == b.arrivals, (seed, src, t0, window)
        assert a.duplicates == b.duplicates
        assert (a.rejected, a.lost, a.blocked, a.down) == (b.rejected, b.lost, b.blocked, b.down)


def test_draws_depend_on_the_key_alone() -> None:
    """A message's draws come from its key, never from what was drawn before it."""
    fast, _slow, _n = _pair(3)
    first = fast.spread(0, 1_000, 300, (-(10**9), 10**9), 77).arrivals
    for t in range(5):
        fast.spread(1, 2_000 + t, 300, (-(10**9), 10**9), t)
    assert fast.spread(0, 1_000, 300, (-(10**9), 10**9), 77).arrivals == first
    assert message_key(1, 2, 3) == message_key(1, 2, 3) != message_key(1, 2, 4)
    assert 0 <= message_key(2**64 - 1, -5) < 2**63


def test_a_hop_under_a_millisecond_falls_back_and_leaves_the_pass_clean() -> None:
    """The bucket queue cannot order a 0 ms hop: the compiled pass declines (the Python pass
    answers) and, though hops were still pending when it stopped, the next messages on the
    same network get the hop-by-hop answer too."""
    window = (-(10**9), 10**9)
    declined = 0
    for seed in range(40):
        fast, slow, n = _pair(seed)
        saved = fast.base_ms.copy()
        for net in (fast, slow):
            net.base_ms[:] = 0  # the kernel reads these weights in place
        if fast._spread_compiled(0, 1_000, 0, window, 5) is None:
            declined += 1
        a, b = fast.spread(0, 1_000, 0, window, 5), slow.spread(0, 1_000, 0, window, 5)
        assert a.arrivals == b.arrivals
        for net in (fast, slow):
            net.base_ms[:] = saved
        for key in range(6):
            src = key % n
            assert fast._spread_compiled(src, 2_000, 300, window, key) is not None
            a, b = (
                fast.spread(src, 2_000, 300, window, key),
                slow.spread(src, 2_000, 300, window, key),
            )
            assert a.arrivals == b.arrivals, (seed, key)
    assert declined >= 5  # the seeds with no jitter, delay or reordering at least
