"""One gossip message's spread, compiled: the hop-by-hop pass of `network.Network` in numba.

Why: the pass is the simulator's inner loop (one per message, every node and link of the mesh
touched), and at a thousand nodes gossiping every 10 s its Python form costs ~1 ms a message,
scipy's Dijkstra ~0.3 ms (and declines whenever a node boots, crashes or a link epoch ends in
flight), which together held the simulator near 8x real time at 1,000 nodes and far below it
at 10,000. This is the same pass, answer for answer, compiled: `spread_pass` pops nodes in
(time, node) order like the Python heap, asks the same planned questions (is the next node up
when the hop lands, which link state holds when a node forwards, does its validator accept the
message at its own clock) and counts the same lost, blocked, down and rejected hops.
tests/sim/test_spread_kernel.py holds it to `Network._spread_hop_by_hop` on random meshes and
fault timelines.

Hop delays are integers of at least 1 ms (the region matrix's least is 2), so a bucket queue
(Dial's algorithm) replaces the heap: buckets cycle through a power of two above the largest
possible hop, so all pending arrivals fall into distinct buckets; each bucket's nodes are
sorted before they are popped, which gives the heap's (time, node) order.

The draws (jitter, reordering, loss coins, duplicates) are counter-based: value j of edge e
for a message is splitmix64 of (the message's key, e, j), so a hop's delay never depends on
which path reached it, the compiled and the Python pass see the very same numbers, and no
generator is built per message. Everything here is integer or exact float arithmetic: the
same key gives the same answer on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

F = TypeVar("F", bound=Callable[..., Any])
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
U64 = np.uint64

NEVER = 1 << 62
MASK64 = (1 << 64) - 1
KEY_BITS = 63
"""Message keys are below 2**63 so that numba takes them as int64."""
(LOST, BLOCKED, DOWN, REJECTED, ERROR) = range(5)
"""Slots of the counts array `spread_pass` fills; ERROR is set when a hop weighs < 1 ms,
which the bucket queue cannot order (the caller then runs the Python pass)."""
JITTER, REORDER, REORDER_MS, COIN = range(4)
"""The four draws of an edge."""
DUP_STREAM = 0x5D3A_9B1C_77E4_2F01
"""Mixed into a message key for its duplicate draws (a stream apart from the edges')."""


def _compiled(fn: F) -> F:
    return cast(F, numba.njit(cache=True, nogil=True)(fn))


def mix64(z: int) -> int:
    """splitmix64's finaliser on a Python int (for keys and tests; the kernels inline it)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def message_key(*words: int) -> int:
    """A message's 63-bit draw key from the run's seed and what identifies the message
    (sender, time, content digest, way): the same words always give the same key."""
    h = 0x243F_6A88_85A3_08D3
    for w in words:
        h = mix64(h ^ (w & MASK64)) + 0x9E3779B97F4A7C15
    return mix64(h) >> (64 - KEY_BITS)


@_compiled
def _mix(z: U64) -> U64:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@_compiled
def _draw(key: int | np.int64, e: int, j: int) -> U64:
    """Draw j of edge (or item) e under a message key: a 64-bit unsigned value."""
    return _mix(np.uint64(key) + np.uint64(4 * e + j + 1) * np.uint64(0x9E3779B97F4A7C15))


@_compiled
def _unit(h: U64) -> float:
    """A uniform float in [0, 1) from 53 bits of h (exact: no rounding anywhere)."""
    return float(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@_compiled
def _hop_ms(
    key: int, e: int, base: int, size_ms: int, jitter_ms: int, reorder: float, reorder_ms: int
) -> int:
    d: int | np.int64 = base + size_ms
    if jitter_ms > 0:
        d += np.int64(_draw(key, e, JITTER) % np.uint64(jitter_ms + 1))
    if reorder > 0.0 and _unit(_draw(key, e, REORDER)) < reorder:
        d += 1 + np.int64(_draw(key, e, REORDER_MS) % np.uint64(reorder_ms))
    return int(d)


@_compiled
def draw_hops(
    key: int,
    base_ms: I64,
    size_ms: int,
    jitter_ms: int,
    reorder: float,
    reorder_ms: int,
    coins: bool,
) -> tuple[I64, F64]:
    """Every edge's delay and loss coin for one message (all ones when no hop can be lost),
    as arrays: what the Python pass and `Network.direct` read."""
    e_count = len(base_ms)
    delay = np.empty(e_count, np.int64)
    coin = np.ones(e_count, np.float64)
    for e in range(e_count):
        delay[e] = _hop_ms(key, e, base_ms[e], size_ms, jitter_ms, reorder, reorder_ms)
        if coins:
            coin[e] = _unit(_draw(key, e, COIN))
    return delay, coin


@_compiled
def duplicate_draws(key: int, count: int, duplicate: float, jitter_ms: int) -> tuple[Bools, I64]:
    """For each of `count` first arrivals: whether its node is handed a second copy and how
    many ms after the first (1 .. jitter_ms + 1)."""
    again = np.zeros(count, np.bool_)
    gap = np.zeros(count, np.int64)
    k = np.int64(np.uint64(key) ^ np.uint64(DUP_STREAM)) & np.int64(0x7FFF_FFFF_FFFF_FFFF)
    for i in range(count):
        if _unit(_draw(k, i, 0)) < duplicate:
            again[i] = True
            gap[i] = 1 + np.int64(_draw(k, i, 1) % np.uint64(jitter_ms + 1))
    return again, gap


@_compiled
def _last_at_or_before(values: I64, lo: int, hi: int, t: int) -> int:
    """The index in values[lo:hi] (sorted) of the last value <= t, or lo - 1."""
    a, b = lo, hi
    while a < b:
        m = (a + b) // 2
        if values[m] <= t:
            a = m + 1
        else:
            b = m
    return a - 1


@_compiled
def spread_pass(
    src: int,
    t0: int,
    key: int,
    size_ms: int,
    jitter_ms: int,
    reorder: float,
    reorder_ms: int,
    coins: bool,
    lo: int,
    hi: int,
    graph: tuple[I64, I64, I64],
    links: tuple[I64, Any, I64, F64, Any],
    nodes: tuple[I64, I64, I64, I64, I64, I64, I64, I64, Any, Any, Any],
    work: tuple[I64, Any, I64, I64, I64, I64, I64],
    out_t: I64,
    out_v: I64,
    counts: I64,
) -> int:
    """First arrivals of the message `src` publishes at `t0` into out_t/out_v (in (time,
    node) order); returns how many. [lo, hi) is the window of local time in which validators
    pass it. counts gets lost, blocked, down, rejected (and ERROR, see above).

    graph: (offsets, targets, base_ms) of the mesh in CSR form. links: (epoch starts, blocked
    [epoch, edge], extra ms [epoch, edge], loss [epoch, edge], severed [edge]). nodes: down
    spans (offsets, starts, ends), skew changes (offsets, from, skew), silent_from, settle_ms
    and the flags final_up, booting, has_skew. work: scratch arrays (best, done, bucket heads,
    item next/node/time, a batch) sized by `Network`; bucket heads are all -1 between calls."""
    offsets, targets, base_ms = graph
    starts, blocked, extra, loss, severed = links
    d_off, d_start, d_end, s_off, s_from, s_val, silent, settle, final_up, booting, skewed = nodes
    best, done, head, item_next, item_node, item_time, batch = work
    n = len(offsets) - 1
    for i in range(5):
        counts[i] = 0
    for i in range(n):
        best[i] = NEVER
        done[i] = 0
    mask = len(head) - 1
    best[src] = t0
    item_node[0], item_time[0], item_next[0] = src, t0, -1
    head[t0 & mask] = 0
    items, pending = 1, 1
    epochs = len(starts)
    ep = _last_at_or_before(starts, 0, epochs, t0)
    ep_end = starts[ep + 1] if ep + 1 < epochs else NEVER
    arrived = 0
    t = t0
    while pending > 0:
        b = t & mask
        k = head[b]
        if k == -1:
            t += 1
            continue
        head[b] = -1
        m = 0
        while k != -1:
            pending -= 1
            u = item_node[k]
            if item_time[k] == best[u] and done[u] == 0:
                batch[m] = u
                m += 1
            k = item_next[k]
        for q in range(1, m):  # insertion sort: buckets hold a few dozen nodes
            u, r = batch[q], q - 1
            while r >= 0 and batch[r] > u:
                batch[r + 1] = batch[r]
                r -= 1
            batch[r + 1] = u
        for q in range(m):
            u = batch[q]
            done[u] = 1
            if u != src:
                local = t
                if skewed[u]:
                    c = _last_at_or_before(s_from, s_off[u], s_off[u + 1], t)
                    if c >= s_off[u]:
                        local = t + s_val[c]
                if not (lo <= local < hi):
                    counts[REJECTED] += 1
                    continue
                out_t[arrived] = t
                out_v[arrived] = u
                arrived += 1
                if t >= silent[u]:
                    continue
            if t >= ep_end:  # the message outlived the link state it started in
                ep = _last_at_or_before(starts, 0, epochs, t)
                ep_end = starts[ep + 1] if ep + 1 < epochs else NEVER
            for e in range(offsets[u], offsets[u + 1]):
                if blocked[ep, e] or severed[e]:
                    counts[BLOCKED] += 1
                    continue
                if coins and _unit(_draw(key, e, COIN)) < loss[ep, e]:
                    counts[LOST] += 1
                    continue
                w = _hop_ms(key, e, base_ms[e], size_ms, jitter_ms, reorder, reorder_ms)
                w += extra[ep, e]
                if w < 1:
                    counts[ERROR] = 1
                    head[:] = -1  # the next call needs an empty ring (pending hops stay in it)
                    return arrived
                v = targets[e]
                ta = t + w
                if ta >= best[v]:
                    continue
                if ta < settle[v]:
                    up = not booting[v]
                    if up:
                        s = _last_at_or_before(d_start, d_off[v], d_off[v + 1], ta)
                        up = s < d_off[v] or not (d_start[s] <= ta < d_end[s])
                else:
                    up = final_up[v]
                if not up:
                    counts[DOWN] += 1
                    continue
                best[v] = ta
                bv = ta & mask
                item_node[items], item_time[items], item_next[items] = v, ta, head[bv]
                head[bv] = items
                items += 1
                pending += 1
        t += 1
    return arrived


@_compiled
def arrivals_digest(times: I64, nodes: I64) -> int:
    """A 63-bit digest of a wave's (time, node) arrivals, for its trace record."""
    h = np.uint64(0x6A09_E667_F3BC_C908)
    for i in range(len(times)):
        h = _mix(h ^ np.uint64(times[i]))
        h = _mix(h ^ np.uint64(nodes[i]))
    return int(h >> np.uint64(1))
