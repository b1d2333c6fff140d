"""Placing jobs on nodes within one scheduling call: the journaled placement state
(`_Placement`), the greedy pass in one job order, and the repair that makes room for a job
left out by a chain of moves (`_best_chain`). `consensus.market.scheduler` runs these for
each job order and keeps the cheapest result; `consensus.market.search` improves it.

Every loop is bounded by a step budget passed in as a one-item list (a count, never a
clock), so every member stops at the same place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from consensus.market.chain_kernel import MAX_DEPTH, Csr, KernelState, chain_search
from consensus.market.fit import JobRequest, _Prepared

Flat = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]
"""Every job's candidate list flat, as (costs, nodes, starts): `CandidateTable.arrays`."""

REPAIR_BUDGET = 12_000
"""Inner steps the repair passes may take per call, shared by the job orders tried: it bounds
the decision time whatever the instance, and being a count (not a clock) it stops at the
same place on every member."""


class _Placement:
    """The mutable state of one `schedule` call: free GPUs left per node and who sits where.

    Every change can be journaled (`mark` / `rollback`), so a tentative rearrangement costs
    only the moves it makes, not a copy of the whole state, and `delta` keeps the change in
    total assignment cost since the mark."""

    def __init__(
        self,
        prep: _Prepared,
        cands_of: dict[int, list[tuple[int, int]]],
        costs: dict[int, dict[int, int]],
        cand_bits: Sequence[int],
        max_need: int,
        flat: Flat | None = None,
    ) -> None:
        self.prep = prep
        self.flat = flat
        """Every job's candidate list flat (`CandidateTable.arrays`), which the compiled chain
        search reads; None (a table built one job at a time, for values beyond int64): the
        search runs in Python."""
        self.mirror: _Mirror | None = None
        self.dirty_nodes: set[int] = set()
        self.dirty_jobs: set[int] = set()
        """Nodes and jobs changed since the mirror was last brought up to date."""
        self.left = list(prep.free)
        self.cand_bits = cand_bits
        """job number -> its fitting nodes as a bit set (bit i: node index i; shared)."""
        self.max_need = max_need
        self.room_bits = [0] * (max_need + 1)
        """room_bits[g]: the nodes with at least g GPUs left, as a bit set (g <= max_need).
        `_place_greedy` turns most jobs of a full market away with one AND and a bit count
        instead of a pass over their candidates. Every change of `left` goes through `put`,
        `take`, `move` or `hold`, which keep it."""
        for i, free in enumerate(self.left):
            self._room_changed(i, 0, free)
        self.on_node: list[dict[int, int]] = [{} for _ in prep.nodes]
        """node index -> {job number: cost of that replica}."""
        self.nodes_of: dict[int, list[int]] = {}
        """job number -> node indices of its placed replicas (a job with none has no key)."""
        self.costs = costs
        """job number -> {node index: cost} over its fitting nodes (shared, read only)."""
        self.cands_of = cands_of
        """job number -> its fitting nodes as (cost, node index), cheapest first."""
        self.journal: list[tuple[int, int, int, int, int]] | None = None
        """(op, job, need, node, other) per change since `mark`; None when not journaling."""
        self.delta = 0

    def synced_mirror(self, jobs: Sequence[JobRequest]) -> _Mirror | None:
        """The array mirror for the compiled chain search, brought up to date; None when
        there are no candidate arrays or a cost is too large for its int64 sums. `jobs` is
        this call's job list (numbers as in `cands_of`)."""
        if self.mirror is None:
            flat = self.flat
            if flat is None or (len(flat[0]) and int(np.abs(flat[0]).max()) >= _KERNEL_SAFE):
                return None
            self.mirror = _Mirror(self, jobs, flat)
        self.mirror.sync(self)
        return self.mirror

    def _room_changed(self, i: int, old: int, new: int) -> None:
        self.dirty_nodes.add(i)
        bits, top = self.room_bits, self.max_need
        if new > old:
            bit = 1 << i
            for g in range(max(old, 0) + 1, min(new, top) + 1):
                bits[g] |= bit
        else:
            clear = ~(1 << i)
            for g in range(max(new, 0) + 1, min(old, top) + 1):
                bits[g] &= clear

    def hold(self, i: int, gpus: int) -> None:
        """Set `gpus` of node i aside (negative: give them back) outside any job's record:
        a repair reserves each replica's node while it looks for the next one."""
        self.left[i] -= gpus
        self._room_changed(i, self.left[i] + gpus, self.left[i])

    def put(self, j: int, need: int, i: int, c: int) -> None:
        self.left[i] -= need
        self._room_changed(i, self.left[i] + need, self.left[i])
        self.on_node[i][j] = c
        self.nodes_of.setdefault(j, []).append(i)
        self.dirty_jobs.add(j)
        self.delta += c
        if self.journal is not None:
            self.journal.append((0, j, need, i, c))

    def take(self, j: int, need: int, i: int) -> int:
        self.left[i] += need
        self._room_changed(i, self.left[i] - need, self.left[i])
        placed = self.nodes_of[j]
        placed.remove(i)
        self.dirty_jobs.add(j)
        if not placed:
            del self.nodes_of[j]
        c = self.on_node[i].pop(j)
        self.delta -= c
        if self.journal is not None:
            self.journal.append((1, j, need, i, c))
        return c

    def move(self, j: int, need: int, src: int, dst: int) -> None:
        self.left[src] += need
        self._room_changed(src, self.left[src] - need, self.left[src])
        old = self.on_node[src].pop(j)
        self.left[dst] -= need
        self._room_changed(dst, self.left[dst] + need, self.left[dst])
        new = self.on_node[dst][j] = self.costs[j][dst]
        placed = self.nodes_of[j]
        placed[placed.index(src)] = dst
        self.dirty_jobs.add(j)
        self.delta += new - old
        if self.journal is not None:
            self.journal.append((2, j, need, src, dst))

    def mark(self) -> None:
        """Start journaling afresh: `rollback` returns to this point."""
        self.journal = []
        self.delta = 0

    def rollback(self) -> None:
        """Undo every change since `mark`, newest first."""
        journal, self.journal = self.journal, None
        assert journal is not None
        for op, j, need, a, b in reversed(journal):
            if op == 0:
                self.take(j, need, a)
            elif op == 1:
                self.put(j, need, a, b)
            else:
                self.move(j, need, b, a)
        self.delta = 0


_KERNEL_SAFE = 1 << 58
"""Costs at or beyond this (absurd prices or weights) keep the search in Python ints: the
compiled search adds up to a chain's worth of them in int64."""


class _Mirror:
    """The placement as the arrays `chain_kernel.chain_search` reads: free GPUs, operator
    ids, residents per node (sorted by job), each job's placed nodes and GPUs per replica,
    and the candidate lists in CSR form. Kept in step lazily: `_Placement` notes each node and
    job it changes, and `sync` rewrites just those rows before a search, so the moves of the
    Python passes cost a set insertion each, not an array write."""

    def __init__(self, state: _Placement, jobs: Sequence[JobRequest], flat: Flat) -> None:
        prep = state.prep
        n = len(prep.nodes)
        self.op_index: dict[bytes, int] = {}
        for op in prep.operator:
            self.op_index.setdefault(op, len(self.op_index))
        self.left = np.array(state.left, np.int64)
        self.operator = np.array([self.op_index[op] for op in prep.operator], np.int64)
        # Widths from the placement's invariants: a node holds at most as many replicas as it
        # had free GPUs (each takes one or more, and free GPUs never go below none), and a
        # job at most its k replicas. A row past them is a placement bug, and numpy says so.
        self.res_job = np.zeros((n, max(prep.free, default=0) + 1), np.int64)
        self.res_cost = np.zeros_like(self.res_job)
        self.res_n = np.zeros(n, np.int64)
        widest_k = max((job.redundancy for job in jobs), default=1)
        self.job_nodes = np.zeros((len(jobs), widest_k), np.int64)
        self.job_n = np.zeros(len(jobs), np.int64)
        self.needs = np.array([job.gpus_needed for job in jobs], np.int64)
        costs, nodes, starts = flat
        self.cands: Csr = (starts, nodes, costs)
        self.out = np.zeros(4 + 3 * MAX_DEPTH, np.int64)
        self._blocked = np.zeros(len(self.op_index), np.bool_)
        self.arrays: KernelState = (self.left, self.operator, self.res_job, self.res_cost,
                                    self.res_n, self.job_nodes, self.job_n, self.needs)  # fmt: skip
        state.dirty_nodes.update(range(n))
        state.dirty_jobs.update(state.nodes_of)

    def sync(self, state: _Placement) -> None:
        """Rewrite the rows of the nodes and jobs changed since the last search."""
        dirty_nodes, dirty_jobs = state.dirty_nodes, state.dirty_jobs
        if dirty_nodes:
            left, on_node = state.left, state.on_node
            mirror_left, res_n = self.left, self.res_n
            res_job, res_cost = self.res_job, self.res_cost
            for i in dirty_nodes:
                mirror_left[i] = left[i]
                here = on_node[i]
                count = len(here)
                res_n[i] = count
                if count == 1:
                    for a, c in here.items():
                        res_job[i, 0], res_cost[i, 0] = a, c
                elif count:
                    ranked = sorted(here)
                    res_job[i, :count] = ranked
                    res_cost[i, :count] = [here[a] for a in ranked]
            dirty_nodes.clear()
        if dirty_jobs:
            nodes_of, job_nodes, job_n = state.nodes_of, self.job_nodes, self.job_n
            for a in dirty_jobs:
                placed = nodes_of.get(a, ())
                count = len(placed)
                job_n[a] = count
                if count:
                    job_nodes[a, :count] = placed
            dirty_jobs.clear()

    def blocked_flags(self, blocked: set[bytes]) -> np.ndarray:
        flags = self._blocked
        flags[:] = False
        for op in blocked:
            if op in self.op_index:
                flags[self.op_index[op]] = True
        return flags


ORDERS = ("fewest_spare_operators", "most_replicas", "most_gpus")
"""The job orders `schedule` tries; it keeps the cheapest result (ties: the first order).
Fewest spare operators first protects the jobs with few places to go; most replicas, and
most GPUs in all, first are first-fit-decreasing, which packs the big jobs that otherwise
find no room left on enough operators. No single order wins on every instance (see
bench/scheduler.py), and the candidate lists, the expensive part, are shared."""


def _queues(jobs: list[JobRequest], spare_of: dict[int, int]) -> dict[str, list[int]]:
    """The jobs of `spare_of` (job number -> operators beyond its k) in each order of
    `ORDERS`, ties by job number: fewest spare operators (most GPUs in all next), most
    replicas (fewest spare next), most GPUs in all (fewest spare next). Built from columns,
    the three sorts cost a thousand tuples each instead of a key function call per job."""
    numbers, spare = list(spare_of), list(spare_of.values())
    minus_replicas = [-jobs[j].redundancy for j in numbers]
    minus_demand = [jobs[j].gpus_needed * k for j, k in zip(numbers, minus_replicas, strict=True)]
    keys = {
        "fewest_spare_operators": (spare, minus_demand),
        "most_replicas": (minus_replicas, spare),
        "most_gpus": (minus_demand, spare),
    }
    return {order: [j for _, _, j in sorted(zip(*keys[order], numbers, strict=True))]
            for order in ORDERS}  # fmt: skip


def _place_all(
    prep: _Prepared,
    jobs: list[JobRequest],
    cands_of: dict[int, list[tuple[int, int]]],
    costs: dict[int, dict[int, int]],
    cand_bits: Sequence[int],
    queue: list[int],
    flat: Flat | None = None,
) -> tuple[_Placement, list[int], int]:
    """One placement in one job order: greedy, then repair. `queue` names the jobs to
    place, in that order (`_queues`). Returns the state, the job numbers left out for want
    of capacity, and the repair steps taken."""
    max_need = max((jobs[j].gpus_needed for j in queue), default=0)
    state = _Placement(prep, cands_of, costs, cand_bits, max_need, flat)
    left_out = [j for j in queue if not _place_greedy(state, j, jobs[j])]
    share = REPAIR_BUDGET // len(ORDERS)
    budget = [share]
    dropped = [j for j in left_out if not _place_with_ejection(state, j, jobs, budget)]
    return state, sorted(dropped), share - max(budget[0], 0)


def _place_greedy(
    state: _Placement, j: int, job: JobRequest, cands: list[tuple[int, int]] | None = None
) -> bool:
    """The k cheapest nodes with room, on distinct operators, from `cands` (default: the
    job's candidate list, cheapest first); places them, or nothing."""
    need, k = job.gpus_needed, job.redundancy
    if (state.cand_bits[j] & state.room_bits[need]).bit_count() < k:
        return False  # fewer than k of its nodes have room: most of a full market's backlog
    if cands is None:
        cands = state.cands_of[j]
    left, operator = state.left, state.prep.operator
    room = [(c, i) for c, i in cands if left[i] >= need]
    if len(room) < k:
        return False
    picked: list[tuple[int, int]] = []
    used: set[bytes] = set()
    for c, i in room:
        if operator[i] not in used:
            picked.append((i, c))
            used.add(operator[i])
            if len(picked) == k:
                for i2, c2 in picked:
                    state.put(j, need, i2, c2)
                return True
    return False


def _place_tight(state: _Placement, j: int, job: JobRequest, cands: list[tuple[int, int]]) -> bool:
    """Like `_place_greedy`, but best fit: the nodes its replicas leave the least room on
    (cost breaks ties), which packs tight capacity without scattering it."""
    need, left = job.gpus_needed, state.left
    by_room = sorted((left[i] - need, c, i) for c, i in cands if left[i] >= need)
    return _place_greedy(state, j, job, [(c, i) for _, c, i in by_room])


CHAIN_DEPTH = 3
"""How many replicas one repair may move in a row to make room."""
CHAIN_STEPS_PER_STEP = 16
"""Destinations the compiled chain search looks at for one step of the budget. A step is
meant to cost about the same time wherever it is spent; the Python passes pay one per
replica or candidate they touch, and the compiled search (`chain_kernel`) looks at a
destination some twenty times faster than the Python search did. Charging it at the
Python rate left its speed unused: the same schedules, found sooner."""
CHAIN_CALL_STEPS = 80
"""The fixed charge of one chain search, in steps: bringing the array mirror up to date and
crossing into compiled code cost about what 80 Python steps do, whatever the search finds.
Without it a market with many short searches (small, one replica per job) would run past
the time its budget was meant to bound."""

_Chain = tuple[tuple[int, int, int], ...]
"""(moved job, from node, to node) for each move of a repair, in order."""


def _best_chain(
    state: _Placement,
    j: int,
    jobs: list[JobRequest],
    cands: list[tuple[int, int]],
    blocked: set[bytes],
    budget: list[int],
    *,
    per_step: int = CHAIN_STEPS_PER_STEP,
    call_steps: int = CHAIN_CALL_STEPS,
) -> tuple[int, int, _Chain] | None:
    """The cheapest chain for one more replica of job j (see `_best_chain_py`, the
    definition), searched by `chain_kernel.chain_search` on the placement's array mirror,
    or by `_best_chain_py` itself for costs beyond int64. The budget is in steps: the search
    pays `call_steps`, then one step per `per_step` destinations it looks at (rounded up);
    with (1, 0) it is the definition's own count, which the tests compare.
    `cands` must be job j's own candidate list, as every caller passes."""
    scaled = [(budget[0] - call_steps) * per_step]
    mirror = state.synced_mirror(jobs)
    if mirror is None:
        found = _best_chain_py(state, j, jobs, cands, blocked, scaled)
    else:
        out = mirror.out
        scaled[0] = chain_search(
            j, mirror.blocked_flags(blocked), CHAIN_DEPTH, scaled[0], mirror.arrays,
            mirror.cands, out,
        )  # fmt: skip
        found = None
        if out[0]:
            head = out[: 4 + 3 * int(out[3])].tolist()
            moves = head[4:]
            chain = tuple((moves[q], moves[q + 1], moves[q + 2]) for q in range(0, len(moves), 3))
            found = head[1], head[2], chain
    budget[0] = scaled[0] // per_step
    return found


def _best_chain_py(
    state: _Placement,
    j: int,
    jobs: list[JobRequest],
    cands: list[tuple[int, int]],
    blocked: set[bytes],
    budget: list[int],
) -> tuple[int, int, _Chain] | None:
    """The cheapest way to put one more replica of job `j` on a node of an operator not in
    `blocked`: directly on a node with room, or on a full node after a chain of up to
    CHAIN_DEPTH moves (the first move frees the node, the next frees the node the first one
    moved to, and so on until a node with room). Returns (added cost, node, moves).

    A replica too small to free the node alone may move to a node with room and leave the
    rest to the next move on the same node: two 2-GPU replicas make room for a 4-GPU one,
    which a tight market's packings need.

    A layered search over states (node, GPUs still to free) with the cheapest chain reaching
    each; moves may lower the cost (a replica can move to a cheaper node that the chain
    frees), so every state of a layer is expanded, within the shared step budget."""
    need = jobs[j].gpus_needed
    left, operator, on_node = state.left, state.prep.operator, state.on_node
    cands_of, cand_bits, room_bits = state.cands_of, state.cand_bits, state.room_bits
    best: tuple[int, int, _Chain] | None = None
    frontier: dict[tuple[int, int], tuple[int, int, _Chain]] = {}
    budget[0] -= len(cands)
    for c, i in cands:
        if operator[i] in blocked:
            continue
        if left[i] >= need:
            if best is None or (c, i) < best[:2]:
                best = (c, i, ())
        elif (i, need - left[i]) not in frontier:
            frontier[(i, need - left[i])] = (c, i, ())
    b = budget[0]  # kept in a local, written back before every return
    for depth in range(CHAIN_DEPTH):
        grown: dict[tuple[int, int], tuple[int, int, _Chain]] = {}
        deeper = depth + 1 < CHAIN_DEPTH
        for (n, short), (c0, start, chain) in sorted(frontier.items()):
            path = {start, *(dst for _, _, dst in chain)}
            moved = {a for a, _, _ in chain}
            b -= 1 + len(on_node[n])
            for a, ca in sorted(on_node[n].items()):
                a_need = jobs[a].gpus_needed
                if a == j or a in moved or (a_need < short and not deeper):
                    continue
                base = c0 - ca
                # One step per destination looked at: when the budget runs out inside this
                # list, the destinations it still pays for are looked at, and the search ends.
                dsts = cands_of[a]
                stop = len(dsts) > max(b, 0)
                if stop:
                    dsts = dsts[: max(b, 0)]
                    b = min(b, 0) - 1
                else:
                    b -= len(dsts)
                # `dsts` is cheapest first and `start` is fixed here, so the first
                # destination with room gives this list's least (value, start): later ones
                # cannot beat it, and the loops stop there (the budget was paid above). A
                # list with no node with room (one AND of bit sets: in a full market, most)
                # is not walked at all unless deeper chains may start from its full nodes.
                if (not deeper or a_need < short) and not cand_bits[a] & room_bits[a_need]:
                    if stop:
                        budget[0] = b
                        return best
                    continue
                a_ops = {operator[x] for x in state.nodes_of[a] if x != n}
                if a_need < short:  # frees part of the node; another move frees the rest
                    key = (n, short - a_need)
                    for cd, dst in dsts:
                        if left[dst] >= a_need and dst not in path and operator[dst] not in a_ops:
                            value = base + cd
                            held = grown.get(key)
                            if held is None or (value, start) < held[:2]:
                                grown[key] = (value, start, (*chain, (a, n, dst)))
                            break
                else:
                    looking = True  # for this list's first destination with room
                    for cd, dst in dsts:
                        if left[dst] >= a_need:
                            if not looking or dst in path or operator[dst] in a_ops:
                                continue
                            value = base + cd
                            if best is None or (value, start) < best[:2]:
                                best = (value, start, (*chain, (a, n, dst)))
                            if not deeper:
                                break
                            looking = False  # the rest only extend chains (full nodes)
                        elif deeper and dst not in path and operator[dst] not in a_ops:
                            value = base + cd
                            key = (dst, a_need - left[dst])
                            held = grown.get(key)
                            if held is None or (value, start) < held[:2]:
                                grown[key] = (value, start, (*chain, (a, n, dst)))
                if stop:
                    budget[0] = b
                    return best
        frontier = grown
    budget[0] = b
    return best


def _place_with_ejection(
    state: _Placement, j: int, jobs: list[JobRequest], budget: list[int]
) -> bool:
    """Place job `j` replica by replica, each by its cheapest chain (`_best_chain`) from its
    candidate list; all undone if k replicas cannot be found."""
    if budget[0] <= 0:
        return False  # with no moves left, room is only what the greedy pass already saw
    cands = state.cands_of[j]  # read only now: a list is built on its first read
    job = jobs[j]
    need, k = job.gpus_needed, job.redundancy
    operator = state.prep.operator
    used: set[bytes] = set()
    undo: list[tuple[int, int, int]] = []
    picked: list[int] = []
    while len(picked) < k:
        found = _best_chain(state, j, jobs, cands, used, budget)
        if found is None:
            for a, src, dst in reversed(undo):
                state.move(a, jobs[a].gpus_needed, dst, src)
            for i in picked:
                state.hold(i, -need)
            return False
        _, i, chain = found
        for a, src, dst in reversed(chain):  # the last move first: it lands on free room
            state.move(a, jobs[a].gpus_needed, src, dst)
            undo.append((a, src, dst))
        state.hold(i, need)
        picked.append(i)
        used.add(operator[i])
    for i in picked:
        state.hold(i, -need)
        state.put(j, need, i, state.costs[j][i])
    return True
