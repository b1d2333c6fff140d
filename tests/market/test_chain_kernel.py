"""The compiled chain search (`consensus.market.chain_kernel`) against its definition, the
Python search `placement._best_chain_py`: on random placements, jobs, blocked operators and
budgets (down to budgets that stop it in mid-list) both must give the same chain and leave
the same budget; and whole schedules must come out byte-identical whichever search runs."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from bench.scheduler import quality_weights, random_instance
from consensus.market import chain_kernel, placement
from consensus.market.fit import JobRequest, _Prepared
from consensus.market.placement import (
    _best_chain,
    _best_chain_py,
    _Mirror,
    _place_all,
    _place_greedy,
    _Placement,
    _queues,
)
from consensus.market.scheduler import DEFAULT_WEIGHTS, schedule

BUDGETS = (-5, 0, 1, 7, 40, 300, 3_000, 10**7)


def _placed_state(seed: int, n_jobs: int, n_nodes: int, load: float) -> tuple[
    _Placement, list[JobRequest]]:  # fmt: skip
    """A tight market placed greedily in one order (some jobs left out, most nodes full):
    the states the repair and the search run chains on."""
    jobs, nodes = random_instance(seed, n_jobs, n_nodes, load=load)
    by_id = sorted(jobs, key=lambda j: j.job_id)
    prep = _Prepared(nodes, DEFAULT_WEIGHTS)
    table = prep.candidate_table(by_id)
    cands_of = {j: table.list_of(j) for j in range(len(by_id))}
    costs = {j: table.cost_map(j) for j in range(len(by_id))}
    spare = {j: table.operators[j] - job.redundancy for j, job in enumerate(by_id)
             if table.operators[j] >= job.redundancy}  # fmt: skip
    queue = _queues(by_id, spare)["most_gpus"]
    max_need = max(job.gpus_needed for job in by_id)
    state = _Placement(prep, cands_of, costs, table.bits, max_need, table.arrays)
    for j in queue:
        _place_greedy(state, j, by_id[j])
    return state, by_id


def test_compiled_search_answers_as_the_python_search() -> None:
    checked = found = stopped = 0
    for seed in range(6):
        c, f, s = _compare_on(seed)
        checked, found, stopped = checked + c, found + f, stopped + s
    # the cases that matter were reached: chains with moves, and searches cut short
    assert checked > 500 and found > 20 and stopped > 50, (checked, found, stopped)


def _compare_on(seed: int) -> tuple[int, int, int]:
    state, jobs = _placed_state(seed, 120, 25, 1.3)
    operators = sorted(set(state.prep.operator))
    checked = found = stopped = 0
    for j in range(len(jobs)):
        cands = state.cands_of[j]
        if not cands:
            continue
        placed = state.nodes_of.get(j, [])
        blocked = {state.prep.operator[i] for i in placed}
        if j % 2:
            blocked.add(operators[j % len(operators)])
        for b in BUDGETS:
            py_budget, kernel_budget = [b], [b]
            want = _best_chain_py(state, j, jobs, cands, blocked, py_budget)
            got = _best_chain(state, j, jobs, cands, blocked, kernel_budget, per_step=1,
                              call_steps=0)  # fmt: skip
            assert got == want, (seed, j, b)
            assert kernel_budget == py_budget, (seed, j, b)
            checked += 1
            found += want is not None and len(want[2]) > 0
            stopped += py_budget[0] < 0
    return checked, found, stopped


def test_the_mirror_follows_every_change_of_the_placement() -> None:
    """Moves, takes, holds and rollbacks between searches: each search sees the placement
    as it is then (the mirror rewrites just the rows that changed)."""
    state, jobs = _placed_state(11, 90, 20, 1.2)
    placed_jobs = sorted(state.nodes_of)
    for step, a in enumerate(placed_jobs[:25]):
        state.mark()
        i = state.nodes_of[a][0]
        state.take(a, jobs[a].gpus_needed, i)
        if step % 3 == 0:
            state.hold(i, 1)
        for j in (a, placed_jobs[-1 - step]):
            blocked = {state.prep.operator[x] for x in state.nodes_of.get(j, [])}
            py_budget, kernel_budget = [5_000], [5_000]
            want = _best_chain_py(state, j, jobs, state.cands_of[j], blocked, py_budget)
            got = _best_chain(state, j, jobs, state.cands_of[j], blocked, kernel_budget,
                              per_step=1, call_steps=0)  # fmt: skip
            assert (got, kernel_budget) == (want, py_budget), (step, j)
        if step % 3 == 0:
            state.hold(i, -1)
        if step % 2:
            state.rollback()
        else:
            state.journal = None


def _digest(out: object) -> str:
    return hashlib.sha256(repr(out).encode()).hexdigest()


@pytest.mark.parametrize(("seed", "n_jobs", "n_nodes", "load"), [
    (0, 300, 60, 1.2), (1, 120, 40, 1.2), (2, 40, 15, 0.9), (3, 200, 50, 0.9),
])  # fmt: skip
def test_schedules_are_identical_with_the_python_search(
    seed: int, n_jobs: int, n_nodes: int, load: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, nodes = random_instance(seed, n_jobs, n_nodes, load=load)
    weights = quality_weights(jobs, nodes)
    compiled = schedule(jobs, nodes, weights)
    calls = []

    def python_search(*args: object) -> object:
        calls.append(1)
        return _best_chain_py(*args)  # type: ignore[arg-type]

    # no mirror: every search falls back to the Python definition
    monkeypatch.setattr(_Placement, "synced_mirror", lambda self, jobs: None)
    monkeypatch.setattr(placement, "_best_chain_py", python_search)
    assert _digest(schedule(jobs, nodes, weights)) == _digest(compiled)
    assert calls  # the Python search really ran


def test_costs_beyond_int64_take_the_python_search() -> None:
    """A price near 2**62 makes costs the compiled search's int64 sums cannot hold: the
    mirror declines and the Python search (Python ints) answers."""
    jobs, nodes = random_instance(5, 40, 10, load=1.3)
    nodes = [replace(n, price_per_gpu_hour=n.price_per_gpu_hour * 2**52) for n in nodes]
    jobs = [replace(j, max_price_per_gpu_hour=2**63) for j in jobs]
    by_id = sorted(jobs, key=lambda j: j.job_id)
    prep = _Prepared(nodes, DEFAULT_WEIGHTS)
    table = prep.candidate_table(by_id)
    spare = {j: table.operators[j] - job.redundancy for j, job in enumerate(by_id)
             if table.operators[j] >= job.redundancy}  # fmt: skip
    state, _, _ = _place_all(prep, by_id, {j: table.list_of(j) for j in range(len(by_id))},
                             {j: table.cost_map(j) for j in range(len(by_id))}, table.bits,
                             _queues(by_id, spare)["most_gpus"],
                             table.arrays)  # fmt: skip
    assert max(table.costs) >= placement._KERNEL_SAFE
    assert state.synced_mirror(by_id) is None
    assigned, _ = schedule(jobs, nodes)
    assert assigned


def test_mirror_arrays_are_int64_views_of_the_candidate_table() -> None:
    """The CSR the kernel reads is the table's own arrays (no copy per job order)."""
    state, jobs = _placed_state(4, 80, 20, 1.0)
    mirror = state.synced_mirror(jobs)
    assert isinstance(mirror, _Mirror)
    starts, nodes, costs = mirror.cands
    assert starts.dtype == nodes.dtype == costs.dtype == np.int64
    for j in range(len(jobs)):
        pairs = list(zip(costs[starts[j] : starts[j + 1]].tolist(),
                         nodes[starts[j] : starts[j + 1]].tolist(), strict=True))  # fmt: skip
        assert pairs == state.cands_of[j]


def test_warm_up_compiles_the_signature_the_scheduler_calls() -> None:
    """A node warms the kernel up while it starts (`node.runtime`); that is only worth it if
    the scheduler's own calls then find that very compilation, not a second one."""
    chain_kernel.warm_up()
    jobs, nodes = random_instance(3, 120, 25, load=1.3)
    schedule(jobs, nodes)
    assert len(chain_kernel.chain_search.signatures) == 1
