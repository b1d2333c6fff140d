"""Improving a schedule once it is built: a job left out takes the place of a dearer one
(`_swap_in`), a ruin-and-recreate search while jobs are left out (`_ruin_recreate`: clear a
left-out job's nodes, or trade a placed job for it, and put everything back in a drawn
order, accepting what is not much worse), a last pass of every trade (`_trade_in`), and
re-placing each replica by its cheapest chain (`_improve`).

Draws come from `_Draws` (splitmix64, seeded by the caller from the job ids), and every loop
is bounded by a step budget, so the search is the same on every member.
"""

from __future__ import annotations

from consensus.market.fit import JobRequest
from consensus.market.placement import (
    _best_chain,
    _place_greedy,
    _place_tight,
    _place_with_ejection,
    _Placement,
)

RUIN_ROUND_STEPS = 50
"""The fixed cost of one ruin-and-recreate round (draws, marks, bookkeeping) in steps."""


def _swap_in(
    state: _Placement, jobs: list[JobRequest], dropped: list[int], budget: list[int]
) -> list[int]:
    """When jobs must be left out, leave out those that cost most to serve: a single-replica
    job left out takes the node of a placed single-replica job (equal penalty) if it is
    cheaper there, and the displaced job is left out in its place (or placed again if room
    is found for it later). Returns the jobs left out now, in job order."""
    out = set(dropped)
    left, on_node = state.left, state.on_node
    b = budget[0]  # kept in a local, written back before every return
    for u in dropped:
        job = jobs[u]
        if job.redundancy != 1:
            continue
        best: tuple[int, int, int] | None = None
        """(saving, node, displaced job)."""
        need = job.gpus_needed
        for c, i in state.cands_of[u]:
            # One step per placed replica looked at. The budget is paid per node: running
            # out inside a node's list returns before any swap for `u`, as running out at
            # its start does, so paying the whole list first changes nothing.
            placed = on_node[i]
            b -= len(placed)
            if b < 0:
                budget[0] = b
                return sorted(out)
            for a, ca in placed.items():
                if ca <= c:
                    continue  # no saving
                a_job = jobs[a]
                if a_job.redundancy != 1 or left[i] + a_job.gpus_needed < need:
                    continue
                option = (ca - c, -i, a)
                if best is None or option > best:
                    best = option
        if best is not None:
            _, i, a = best
            state.take(a, jobs[a].gpus_needed, -i)
            state.put(u, job.gpus_needed, -i, state.costs[u][-i])
            out.discard(u)
            out.add(a)
    budget[0] = b
    return sorted(out)


def _trade_in(
    state: _Placement,
    jobs: list[JobRequest],
    dropped: list[int],
    penalty: int,
    budget: list[int],
) -> list[int]:
    """Every trade in turn (see `_trade_round`), on the schedule the search ended with: for
    each job left out, most replicas first, each placed job with no more replicas and a
    replica on one of its fitting nodes is taken off, the left-out job placed by chains and
    the displaced one placed again if room is found; the first trade that lowers the total
    (penalties included) is kept. The tight markets' usual miss is one such trade: the
    optimum leaves out one replica fewer. Returns the jobs left out, in job order."""
    out = set(dropped)
    for u in sorted(dropped, key=lambda a: (-jobs[a].redundancy, a)):
        if budget[0] <= 0:  # a trade would stop at its first step: none can be made
            break
        if u not in out:
            continue
        k = jobs[u].redundancy
        victims = sorted(_trade_victims(state, jobs, u), key=lambda a: (jobs[a].redundancy, a))
        budget[0] -= len(victims)
        for v in victims:
            budget[0] -= RUIN_ROUND_STEPS // 5
            if budget[0] <= 0:
                return sorted(out)
            state.mark()
            for i in list(state.nodes_of[v]):
                state.take(v, jobs[v].gpus_needed, i)
            if not _place_with_ejection(state, u, jobs, budget):
                state.rollback()
                continue
            back = _place_with_ejection(state, v, jobs, budget)
            change = state.delta - penalty * k + (0 if back else penalty * jobs[v].redundancy)
            if change < 0:
                state.journal = None
                out.discard(u)
                if not back:
                    out.add(v)
                break
            state.rollback()
    return sorted(out)


def _trade_victims(state: _Placement, jobs: list[JobRequest], u: int) -> set[int]:
    """The placed jobs a trade may give up for left-out job `u`: those with a replica on one
    of its fitting nodes and no more replicas than it (so the trade never loses replicas)."""
    k = jobs[u].redundancy
    return {a for _, i in state.cands_of[u] for a in state.on_node[i] if jobs[a].redundancy <= k}


class _Draws:
    """splitmix64: the search's only source of variety, seeded from the jobs' ids, so every
    member draws the same numbers on every platform and Python version (`random` promises
    neither) and the schedule stays a pure function of its inputs."""

    MASK = (1 << 64) - 1

    def __init__(self, seed: int) -> None:
        self.state = seed & self.MASK

    def below(self, n: int) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return (z ^ (z >> 31)) % n


def _recreate_order(style: int, pool: list[int], jobs: list[JobRequest], state: _Placement,
                    draws: _Draws) -> list[int]:  # fmt: skip
    """The order a round puts jobs back in: fewest GPUs first (most replicas per GPU),
    fewest places to go first, or shuffled; draws break ties, so rounds differ."""
    keyed = []
    for a in pool:
        gpus, places = jobs[a].gpus_needed, len(state.cands_of[a])
        key = (gpus, places) if style == 0 else (places, gpus) if style == 1 else (0, 0)
        keyed.append((key, draws.below(1 << 20), a))
    keyed.sort()
    return [a for _, _, a in keyed]


def _ruin_recreate(
    state: _Placement,
    jobs: list[JobRequest],
    dropped: list[int],
    penalty: int,
    budget: list[int],
    draws: _Draws,
) -> list[int]:
    """Ruin and recreate (Schrimpf et al., 2000) while jobs are left out: each round draws a
    job left out and either clears a few of its nodes and puts everything back
    (`_clear_round`), or trades a placed job for it (`_trade_round`). A round is kept if the
    total (penalties included) does not rise by more than a threshold that falls to nothing
    as the budget runs out (threshold accepting), otherwise rolled back; the best schedule
    seen is the one returned.

    This is what the greedy and its chains cannot do in tight markets: give up a job that
    eats capacity for two that fit in its place, or clear the only nodes a constrained job
    can use and find the others a home elsewhere. Returns the jobs left out, in job order."""
    out = set(dropped)
    start = budget[0]
    current = best = 0
    best_placed = {j: list(v) for j, v in state.nodes_of.items()}
    best_out = set(out)
    while budget[0] > 0 and out:
        u = sorted(out)[draws.below(len(out))]
        state.mark()
        if draws.below(2) == 0:
            pool, still_out = _trade_round(state, jobs, u, out, budget, draws)
        else:
            pool, still_out = _clear_round(state, jobs, u, out, budget, draws)
        change = state.delta + penalty * (
            sum(jobs[a].redundancy for a in still_out) - sum(jobs[a].redundancy for a in out)
        )
        if pool and change < penalty * max(0, budget[0]) // start:
            state.journal = None
            out = still_out
            current += change
            if current < best:
                best = current
                best_placed = {j: list(v) for j, v in state.nodes_of.items()}
                best_out = set(out)
        else:
            state.rollback()
    if current != best:
        for j in list(state.nodes_of):
            for i in list(state.nodes_of[j]):
                state.take(j, jobs[j].gpus_needed, i)
        for j, placed in best_placed.items():
            for i in placed:
                state.put(j, jobs[j].gpus_needed, i, state.costs[j][i])
        out = best_out
    return sorted(out)


def _clear_round(
    state: _Placement,
    jobs: list[JobRequest],
    u: int,
    out: set[int],
    budget: list[int],
    draws: _Draws,
) -> tuple[list[int], set[int]]:
    """One ruin: clear a few of `u`'s fitting nodes (every job with a replica there comes
    off whole), and put the cleared jobs and the left-out jobs that could use those nodes
    back in a drawn order, cheapest-first or best-fit, with chains for those that do not fit
    directly. Returns the jobs taken up and the jobs left out after."""
    cands_of, on_node = state.cands_of, state.on_node
    cands = cands_of[u]
    width = min(len(cands), 2 * jobs[u].redundancy + draws.below(3))
    cleared = {cands[draws.below(len(cands))][1] for _ in range(width)}
    removed = sorted({a for i in cleared for a in on_node[i]})
    pool = removed + [a for a in sorted(out) if any(i in state.costs[a] for i in cleared)]
    budget[0] -= RUIN_ROUND_STEPS + len(out) + 4 * len(pool)
    for a in removed:
        for i in list(state.nodes_of[a]):
            state.take(a, jobs[a].gpus_needed, i)
    order = _recreate_order(draws.below(3), pool, jobs, state, draws)
    order = [u, *(a for a in order if a != u)]  # the nodes were cleared for it
    place = _place_tight if draws.below(2) == 0 else _place_greedy
    unplaced = []
    for a in order:
        budget[0] -= len(cands_of[a])
        if not place(state, a, jobs[a], cands_of[a]):
            unplaced.append(a)
    still_out = out.difference(pool)
    still_out.update(a for a in unplaced if not _place_with_ejection(state, a, jobs, budget))
    return pool, still_out


def _trade_round(
    state: _Placement,
    jobs: list[JobRequest],
    u: int,
    out: set[int],
    budget: list[int],
    draws: _Draws,
) -> tuple[list[int], set[int]]:
    """One trade: take off a drawn placed job `v` with no more replicas than `u` and a
    replica on one of `u`'s fitting nodes, place `u` by chains, then `v` again if room is
    found. Each replica left out costs the penalty, so giving up a (1 x 4 GPU) job to fit a
    (2 x 4 GPU) one whose fitting nodes are full gains one; a trade of equals moves the
    search along a plateau. Returns [v, u] (empty if there is no `v`) and the jobs left
    out after."""
    victims = sorted(_trade_victims(state, jobs, u))
    budget[0] -= RUIN_ROUND_STEPS + len(victims)
    if not victims:
        return [], out
    v = victims[draws.below(len(victims))]
    for i in list(state.nodes_of[v]):
        state.take(v, jobs[v].gpus_needed, i)
    still_out = set(out)
    if _place_with_ejection(state, u, jobs, budget):
        still_out.discard(u)
    if u in still_out or not _place_with_ejection(state, v, jobs, budget):
        still_out.add(v)
    return [v, u], still_out


def _improve(state: _Placement, jobs: list[JobRequest], budget: list[int]) -> None:
    """One sweep over the placed replicas in job id order: take each out and put it back by
    its cheapest chain (`_best_chain`); keep the change only if strictly cheaper. Since the
    replica's own node has room once it is out, chains can end there, so this finds swaps
    (two replicas trading nodes) and longer rotations as well as plain moves: the greedy
    pass fixed each job's nodes before seeing the jobs after it, and this undoes the worst
    of that."""
    for j in sorted(state.nodes_of):
        need = jobs[j].gpus_needed
        for i in sorted(state.nodes_of[j]):
            if budget[0] <= 0:
                return
            old = state.take(j, need, i)
            blocked = {state.prep.operator[x] for x in state.nodes_of.get(j, ())}
            found = _best_chain(state, j, jobs, state.cands_of[j], blocked, budget)
            if found is None or found[0] >= old:
                state.put(j, need, i, old)
                continue
            _, dst, chain = found
            for a, src, to in reversed(chain):
                state.move(a, jobs[a].gpus_needed, src, to)
            state.put(j, need, dst, state.costs[j][dst])
