"""The scheduler's inner loop, compiled: `placement._best_chain`'s layered search for the
cheapest chain of moves that makes room for one more replica, in numba.

Why: in a tight market that search is most of a scheduling call (about 85% at 300 jobs x 60
nodes), and the call's quality follows how many rounds of ruin and recreate its step budget
buys (three times the budget turns 23 of 90 held-out instances over 5% of the optimum into
9). The search only reads the placement, so it runs on array mirrors of it
(`placement._Mirror`) and answers exactly what the Python search answers, step for step:
the same states in the same order, the same ties, the same steps charged, the same early
stop when the budget runs out. tests/market/test_chain_kernel.py holds the two together on
random placements, and `schedule` gives byte-identical schedules either way.

Integers only (int64: `_Placement` falls back to the Python search for values beyond it),
no clock, no randomness: every member computes the same chain.

Layout. Nodes, jobs and operators are numbered as in the placement. A search state (node n,
GPUs still to free there) is the key n * width + short, so sorting keys sorts states as the
Python search sorts its (node, short) tuples. Each state holds its chain's value, start
node, length and moves (job, from, to).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

F = TypeVar("F", bound=Callable[..., Any])
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

KernelState = tuple[I64, I64, I64, I64, I64, I64, I64, I64]
"""What `chain_search` reads of a placement (see its docstring)."""
Csr = tuple[I64, I64, I64]
"""Candidate lists as (offsets, nodes, costs)."""

MAX_DEPTH = 8
"""The longest chain the arrays hold (placement.CHAIN_DEPTH is 3)."""


def _compiled(fn: F) -> F:
    return cast(F, numba.njit(cache=True, nogil=True)(fn))


@_compiled
def _better(value: int, start: int, held_value: int, held_start: int) -> bool:
    """(value, start) < (held_value, held_start), as tuples compare."""
    return value < held_value or (value == held_value and start < held_start)


@_compiled
def _extend(into: I64, chain: I64, length: int, a: int, n: int, dst: int) -> None:
    """into = chain's first `length` moves, then (a, n, dst)."""
    for q in range(3 * length):
        into[q] = chain[q]
    into[3 * length], into[3 * length + 1], into[3 * length + 2] = a, n, dst


@_compiled
def _barred(
    dst: int, start: int, chain: I64, length: int, a: int, n: int,
    job_nodes: I64, job_n: I64, operator: I64,
) -> bool:  # fmt: skip
    """Whether job a's replica on node n may not move to dst: dst is on the chain's path
    (its start or a node a move went to), or its operator runs another replica of a."""
    if dst == start:
        return True
    for m in range(length):
        if chain[3 * m + 2] == dst:
            return True
    for x in range(job_n[a]):
        other = job_nodes[a, x]
        if other != n and operator[other] == operator[dst]:
            return True
    return False


@_compiled
def _finish(out: I64, found: bool, value: int, start: int, length: int, moves: I64) -> None:
    out[0] = 1 if found else 0
    if found:
        out[1], out[2], out[3] = value, start, length
        for q in range(3 * length):
            out[4 + q] = moves[q]


@_compiled
def chain_search(
    j: int,
    blocked: Bools,
    depth_max: int,
    budget: int,
    state: KernelState,
    cands: Csr,
    out: I64,
) -> int:
    """The cheapest chain for one more replica of job j on a node whose operator is not
    `blocked` (a flag per operator). Returns the budget left; out[0] is 1 if a chain was
    found, then out[1] its added cost, out[2] the node the replica lands on, out[3] the
    number of moves and out[4 + 3m : 7 + 3m] move m as (job, from node, to node).

    state: left GPUs per node, operator per node, residents per node (job and cost, sorted
    by job; count), each job's placed nodes (and count) and GPUs per replica. cands: each
    job's fitting nodes, cheapest first, as offsets, nodes and costs (CSR)."""
    left, operator, res_job, res_cost, res_n, job_nodes, job_n, needs = state
    c_start, c_node, c_cost = cands
    need = needs[j]
    width = 1
    for q in range(len(needs)):
        width = max(width, needs[q] + 1)
    size = len(left) * width
    f_val, f_start = np.empty(size, np.int64), np.empty(size, np.int64)
    f_len, f_moves = np.zeros(size, np.int64), np.empty((size, 3 * MAX_DEPTH), np.int64)
    f_on, f_keys = np.zeros(size, np.bool_), np.empty(size, np.int64)
    g_val, g_start = np.empty(size, np.int64), np.empty(size, np.int64)
    g_len, g_moves = np.zeros(size, np.int64), np.empty((size, 3 * MAX_DEPTH), np.int64)
    g_on, g_keys = np.zeros(size, np.bool_), np.empty(size, np.int64)
    found, best_val, best_start, best_len = False, 0, 0, 0
    best_moves = np.empty(3 * MAX_DEPTH, np.int64)
    f_count = 0
    lo, hi = c_start[j], c_start[j + 1]
    b = budget - (hi - lo)
    for p in range(lo, hi):
        c, i = c_cost[p], c_node[p]
        if blocked[operator[i]]:
            continue
        if left[i] >= need:
            if not found or _better(c, i, best_val, best_start):
                found, best_val, best_start, best_len = True, c, i, 0
        else:
            key = i * width + need - left[i]
            if not f_on[key]:
                f_on[key] = True
                f_val[key], f_start[key], f_len[key] = c, i, 0
                f_keys[f_count] = key
                f_count += 1
    for depth in range(depth_max):
        deeper = depth + 1 < depth_max
        g_count = 0
        for key in np.sort(f_keys[:f_count]):
            n, short = key // width, key % width
            c0, start, length = f_val[key], f_start[key], f_len[key]
            chain = f_moves[key]
            b -= 1 + res_n[n]
            for r in range(res_n[n]):
                a, ca = res_job[n, r], res_cost[n, r]
                a_need = needs[a]
                if a == j or (a_need < short and not deeper):
                    continue
                moved = False
                for m in range(length):
                    moved = moved or chain[3 * m] == a
                if moved:
                    continue
                base = c0 - ca
                # One step per destination looked at: when the budget runs out inside this
                # list, the destinations it still pays for are looked at, and the search ends.
                a_lo, a_hi = c_start[a], c_start[a + 1]
                stop = a_hi - a_lo > max(b, 0)
                if stop:
                    a_hi = a_lo + max(b, 0)
                    b = min(b, 0) - 1
                else:
                    b -= a_hi - a_lo
                if not deeper or a_need < short:  # no fitting node of a's with room: skip
                    roomy = False
                    for p in range(c_start[a], c_start[a + 1]):
                        if left[c_node[p]] >= a_need:
                            roomy = True
                            break
                    if not roomy:
                        if stop:
                            _finish(out, found, best_val, best_start, best_len, best_moves)
                            return int(b)
                        continue
                if a_need < short:  # frees part of node n; another move frees the rest
                    key2 = n * width + short - a_need
                    for p in range(a_lo, a_hi):
                        dst = c_node[p]
                        if left[dst] >= a_need and not _barred(
                            dst, start, chain, length, a, n, job_nodes, job_n, operator
                        ):
                            value = base + c_cost[p]
                            if not g_on[key2] or _better(value, start, g_val[key2], g_start[key2]):
                                if not g_on[key2]:
                                    g_on[key2] = True
                                    g_keys[g_count] = key2
                                    g_count += 1
                                _extend(g_moves[key2], chain, length, a, n, dst)
                                g_val[key2], g_start[key2], g_len[key2] = value, start, length + 1
                            break
                else:
                    looking = True  # for this list's first destination with room
                    for p in range(a_lo, a_hi):
                        dst = c_node[p]
                        room = left[dst]
                        if room >= a_need:
                            if not looking or _barred(
                                dst, start, chain, length, a, n, job_nodes, job_n, operator
                            ):
                                continue
                            value = base + c_cost[p]
                            if not found or _better(value, start, best_val, best_start):
                                found, best_val, best_start = True, value, start
                                _extend(best_moves, chain, length, a, n, dst)
                                best_len = length + 1
                            if not deeper:
                                break
                            looking = False  # the rest only extend chains (full nodes)
                        elif deeper and not _barred(
                            dst, start, chain, length, a, n, job_nodes, job_n, operator
                        ):
                            # the state update is written out here and above, not a helper:
                            # as a call (inlined or not) it cost the search 40% of its speed
                            value = base + c_cost[p]
                            key2 = dst * width + a_need - room
                            if not g_on[key2] or _better(value, start, g_val[key2], g_start[key2]):
                                if not g_on[key2]:
                                    g_on[key2] = True
                                    g_keys[g_count] = key2
                                    g_count += 1
                                _extend(g_moves[key2], chain, length, a, n, dst)
                                g_val[key2], g_start[key2], g_len[key2] = value, start, length + 1
                if stop:
                    _finish(out, found, best_val, best_start, best_len, best_moves)
                    return int(b)
        for q in range(f_count):
            f_on[f_keys[q]] = False
        f_val, g_val = g_val, f_val
        f_start, g_start = g_start, f_start
        f_len, g_len = g_len, f_len
        f_moves, g_moves = g_moves, f_moves
        f_on, g_on = g_on, f_on
        f_keys, g_keys = g_keys, f_keys
        f_count = g_count
    _finish(out, found, best_val, best_start, best_len, best_moves)
    return int(b)


def warm_up() -> None:
    """Compile `chain_search` now (or load it from numba's cache, ~0.2 s), on a one-node,
    one-job placement, so the first block with pending jobs does not wait for it: compiling
    takes seconds, and every member would spend them inside the same block. A node calls
    this while it starts."""
    one = np.zeros(1, np.int64)
    grid = np.zeros((1, 1), np.int64)
    state = (one.copy(), one.copy(), grid.copy(), grid.copy(), one.copy(), grid.copy(),
             one.copy(), np.ones(1, np.int64))  # fmt: skip
    cands = (np.array([0, 1], np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64))
    chain_search(
        0, np.zeros(1, np.bool_), 1, 10, state, cands, np.zeros(4 + 3 * MAX_DEPTH, np.int64)
    )
