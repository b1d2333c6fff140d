"""Which nodes run which jobs: a pure, deterministic scheduler and the check that members run
on the proposer's choice.

The proposer of a block calls `schedule(jobs, nodes, weights)` on the pending jobs and the
offers in committed state; the other members call `check_assignment` on what it proposed
(or, since the scheduler is deterministic, simply recompute it). Every outcome is a record:
an `Assignment` with its cost, or an `Unassigned` with a `Reason` code that anyone can check
again from the same inputs. Nothing here reads a clock, a random source or the disk, and all
arithmetic is on integers, so every member lands on the same bytes.

Fit, then cost. A node fits a job when it has enough GPUs of the right model and memory, is
in the job's region (if one is asked for), asks no more than the job's price cap, is within
the job's round-trip time limit of the submitter, and has the free GPUs. Among fitting nodes,
`cost` weighs the price, the measured RTT to the submitter (gossiped measurements; a declared
region is only the fallback when no one has measured), reputation, measured speed and how
loaded the node already is. Lower is better.

The search. The exact optimum (an integer program once replicas need distinct operators and
jobs need several GPUs) is too slow and too intricate to run inside consensus, so `schedule`
is greedy, then repairs and improves its greedy result. Each job's fitting nodes are sorted
by cost once. For each of a few job orders (`ORDERS`: fewest spare operators first, most
replicas first, most GPUs first), each job in turn takes its k cheapest nodes with room on k
distinct operators (exact for one job: the optimum of a partition matroid); each job left
out is retried with chains of moves that make room; each placed replica is then re-placed
by its cheapest chain if that is cheaper (swaps and rotations included), on the cheapest of
the orders' results. While jobs are still left out, a ruin-and-recreate search
(`_ruin_recreate`) clears the nodes of one of them and puts everything back in drawn orders,
or trades a placed job with no more replicas for it, which is what finds the packings a
tight market needs; a last pass (`_trade_in`) tries every such trade on its result. All
work is bounded by step counts, not a clock, and the search's draws come from a generator
seeded by the job ids, so every member stops at the same place with the same result. The
chains, the inner loop of repair and search, are searched by compiled integer code
(`consensus.market.chain_kernel`) that answers as the Python definition does. The tests and
`bench/scheduler.py` measure the result against the exact optimum (scipy).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from consensus.market.fit import (
    DEFAULT_WEIGHTS,
    PERMILLE,
    SPEED_CAP_PERMILLE,
    Assignment,
    JobRequest,
    NodeOffer,
    Reason,
    ScoreWeights,
    Unassigned,
    _Prepared,
    cost,
    fits,
    rtt_estimate,
    unfit_reason,
)
from consensus.market.placement import ORDERS, _place_all, _place_greedy, _Placement, _queues
from consensus.market.search import _Draws, _improve, _ruin_recreate, _swap_in, _trade_in

__all__ = [
    "DEFAULT_WEIGHTS", "PERMILLE", "SPEED_CAP_PERMILLE", "Assignment", "Invalid", "JobRequest",
    "NodeOffer", "Reason", "ScoreWeights", "Unassigned", "check_assignment", "cost", "fits",
    "rtt_estimate", "schedule", "total_cost", "unfit_reason",
]  # fmt: skip
"""The market's public names: the records and policy (`consensus.market.fit`) are
re-exported here, where the ledger and the tools have always found them."""


class Invalid(enum.IntEnum):
    """Why `check_assignment` refuses a proposer's assignment."""

    UNKNOWN_JOB = 1
    DUPLICATE_JOB = 2
    """A job appears twice (assigned twice, unassigned twice, or both)."""
    MISSING_JOB = 3
    """A pending job is neither assigned nor unassigned."""
    UNKNOWN_NODE = 4
    WRONG_REPLICA_COUNT = 5
    SAME_OPERATOR = 6
    """Two replicas of one job on one operator (or on one node)."""
    DOES_NOT_FIT = 7
    CAPACITY_EXCEEDED = 8
    COST_MISMATCH = 9
    WRONG_REASON = 10
    """An unassigned job's reason is not the one its inputs give."""
    COULD_BE_ASSIGNED = 11
    """A job left out with NO_CAPACITY still fits in the capacity left over."""
    NOT_CANONICAL = 12
    """Records not in job id order (the committed form is sorted, so it has one encoding)."""


_V = TypeVar("_V")

IMPROVE_BUDGET = 12_000
"""The same bound for the improvement pass (run once, on the best order's result)."""
WORK_BUDGET = 150_000
"""Steps one call may take in all. The construction (candidate lists, the greedy passes of
every order, repair, swaps) is counted against it and the improvement pass's share is kept
aside; the ruin-and-recreate search gets what is left, less `TRADE_BUDGET`. So a small
market, cheap to construct, is searched hard, and a large one, whose construction is most of
the bound, is decided in about the same time (bench/scheduler.py measures both)."""
NODE_CHECKS_PER_STEP = 3
"""Node checks in `_Prepared.candidate_table` per step: a check costs about a third of a chain
step."""

TRADE_BUDGET = 20_000
"""The share of what `WORK_BUDGET` leaves after construction that is kept for the final
pass of trades (`_trade_in`) on the best schedule the ruin-and-recreate search found (plus
what the search did not use): the search is a random walk that can end one trade short of
a better schedule, and the pass tries every trade in turn from where it ended."""


def schedule(
    jobs: Sequence[JobRequest],
    nodes: Sequence[NodeOffer],
    weights: ScoreWeights = DEFAULT_WEIGHTS,
) -> tuple[list[Assignment], list[Unassigned]]:
    """Place every job it can; returns the assignments and the jobs left out with a reason,
    both sorted by job id (the committed form). Free GPUs are consumed as jobs are placed, and
    the k replicas of a job always sit on k distinct operators.

    Per job order in `ORDERS`: a greedy pass places each job on its k cheapest nodes with
    room; a repair pass retries each job left out, freeing a full node it fits by a chain of
    up to CHAIN_DEPTH moves of replicas already placed (capacity only shrinks during the
    greedy pass, so this is where it recovers jobs that an earlier, more flexible job crowded
    out). The result with the least `total_cost` (penalties for jobs left out included) is
    kept; a job left out takes the place of a placed one that costs more to serve there
    (`_swap_in`); while jobs are left out, ruin and recreate (`_ruin_recreate`) searches for
    a better packing with the steps `WORK_BUDGET` leaves, and a pass of trades
    (`_trade_in`) follows on its result; an improvement pass re-places each
    replica by its cheapest chain, and a job still left out gets a last direct try on what
    is left.

    Deterministic: the result depends on the inputs' content, never on their order.

    The cyclic garbage collector is paused for the call: it allocates some hundred thousand
    short-lived tuples and lists, none in a cycle (reference counting frees them all), and
    the full collections they would trigger walk the whole process heap (numba's compiler
    included), which put 40-70 ms pauses on a few calls in a hundred (over 200 calls at
    1,000 x 100, p99 fell from 68-78 ms to 28-35 ms with it)."""
    with _collector_paused():
        return _schedule(jobs, nodes, weights)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """`gc.disable()` for the block, then the collector as it was (a caller that had it
    off keeps it off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _schedule(
    jobs: Sequence[JobRequest], nodes: Sequence[NodeOffer], weights: ScoreWeights
) -> tuple[list[Assignment], list[Unassigned]]:
    by_id = sorted(jobs, key=lambda j: j.job_id)
    if len({j.job_id for j in by_id}) != len(by_id):
        raise ValueError("job ids must be distinct")
    prep = _Prepared(nodes, weights)
    reasons: dict[int, Reason] = {}
    spare_of: dict[int, int] = {}
    table = prep.candidate_table(by_id)
    cands_of = _BuiltOnRead(table.list_of)
    costs = _BuiltOnRead(table.cost_map)
    for j, job in enumerate(by_id):
        spare = table.operators[j] - job.redundancy
        if spare < 0:
            # Some operators fit, too few: that is the verdict, with no need to ask every node
            # why it does not fit. None fits: the closest node's reason (`unfit_reason`).
            reasons[j] = Reason.NOT_ENOUGH_OPERATORS if table.operators[j] else table.closest[j]
            continue
        spare_of[j] = spare
    spent = len(prep.nodes) * len(by_id) // NODE_CHECKS_PER_STEP + len(ORDERS) * sum(
        table.count(j) for j in spare_of
    )
    best: tuple[int, int, _Placement, list[int]] | None = None
    queues = _queues(by_id, spare_of)
    for order_no, order in enumerate(ORDERS):
        state, dropped, used = _place_all(
            prep, by_id, cands_of, costs, table.bits, queues[order],
            table.arrays,
        )  # fmt: skip
        spent += used
        score = sum(c for on in state.on_node for c in on.values()) + sum(
            weights.unassigned_penalty * by_id[j].redundancy for j in dropped
        )
        if best is None or (score, order_no) < best[:2]:
            best = (score, order_no, state, dropped)
    assert best is not None
    _, _, state, dropped = best
    budget = [IMPROVE_BUDGET]
    dropped = _swap_in(state, by_id, dropped, budget)
    spent += IMPROVE_BUDGET - max(budget[0], 0) + IMPROVE_BUDGET  # the last: _improve's share
    draws = _Draws(int.from_bytes(hashlib.sha256(b"".join(j.job_id for j in by_id)).digest()[:8]))
    penalty = weights.unassigned_penalty
    rest = max(WORK_BUDGET - spent, 0)
    budget = [rest - min(TRADE_BUDGET, rest)]
    dropped = _ruin_recreate(state, by_id, dropped, penalty, budget, draws)
    dropped = _trade_in(state, by_id, dropped, penalty, [min(TRADE_BUDGET, rest) + budget[0]])
    _improve(state, by_id, [IMPROVE_BUDGET])
    for j in dropped:
        # Moves made after a job was given up on may have opened room for it; a job left out
        # must not fit what is left over (`check_assignment` insists), so it gets one more try.
        if not _place_greedy(state, j, by_id[j]):
            reasons[j] = Reason.NO_CAPACITY
    assigned = []
    for j, placed in state.nodes_of.items():
        assigned.append(Assignment(
            by_id[j].job_id,
            tuple(prep.nodes[i].node_id for i in sorted(placed)),
            sum(state.costs[j][i] for i in placed),
        ))  # fmt: skip
    unassigned = [Unassigned(by_id[j].job_id, r) for j, r in reasons.items()]
    assigned.sort(key=lambda a: a.job_id)
    unassigned.sort(key=lambda u: u.job_id)
    return assigned, unassigned


class _BuiltOnRead(dict[int, _V]):
    """Job number -> a value built from the candidate table on first read. A call reads the
    candidate lists and cost maps of a few hundred jobs of a thousand (those it places or
    tries to); building all of them took a tenth of a 1,000 x 100 call."""

    def __init__(self, build: Callable[[int], _V]) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, j: int) -> _V:
        value = self[j] = self._build(j)
        return value


def total_cost(
    jobs: Sequence[JobRequest],
    assigned: Iterable[Assignment],
    weights: ScoreWeights = DEFAULT_WEIGHTS,
) -> int:
    """A schedule's objective: the assignments' costs plus `unassigned_penalty` per replica
    left unplaced. What the quality figures compare with the exact optimum."""
    placed = {a.job_id: a.cost for a in assigned}
    return sum(
        placed[j.job_id] if j.job_id in placed else weights.unassigned_penalty * j.redundancy
        for j in jobs
    )


def check_assignment(
    jobs: Sequence[JobRequest],
    nodes: Sequence[NodeOffer],
    assigned: Sequence[Assignment],
    unassigned: Sequence[Unassigned],
    weights: ScoreWeights = DEFAULT_WEIGHTS,
) -> Invalid | None:
    """None if a proposer's schedule is valid, else the first problem found.

    Valid means: records in job id order; every pending job exactly once, assigned or not;
    each assignment has k known nodes on k distinct operators that fit the job, with the
    stated cost; no node gives out more GPUs than it has free; each unassigned job's reason is
    the one `unfit_reason` gives, or NO_CAPACITY for a job that fits in principle but not in
    what the assignments left over (so a proposer cannot drop a job it could have placed).
    It does not demand the proposer's greedy choice: any valid schedule passes, and a member
    who wants more can recompute `schedule` and compare bytes."""
    job_by_id = {j.job_id: j for j in jobs}
    node_by_id = {n.node_id: n for n in nodes}
    ids = [a.job_id for a in assigned]
    if ids != sorted(ids) or [u.job_id for u in unassigned] != sorted(u.job_id for u in unassigned):
        return Invalid.NOT_CANONICAL
    seen: set[bytes] = set()
    left = {n.node_id: n.free_gpus for n in nodes}
    for a in assigned:
        job = job_by_id.get(a.job_id)
        if job is None:
            return Invalid.UNKNOWN_JOB
        if a.job_id in seen:
            return Invalid.DUPLICATE_JOB
        seen.add(a.job_id)
        if len(a.node_ids) != job.redundancy:
            return Invalid.WRONG_REPLICA_COUNT
        offers = [node_by_id.get(n) for n in a.node_ids]
        operators: set[bytes] = set()
        total = 0
        for node in offers:
            if node is None:
                return Invalid.UNKNOWN_NODE
            if node.operator in operators:
                return Invalid.SAME_OPERATOR
            operators.add(node.operator)
            if fits(job, node, weights) is not None:
                return Invalid.DOES_NOT_FIT
            left[node.node_id] -= job.gpus_needed
            if left[node.node_id] < 0:
                return Invalid.CAPACITY_EXCEEDED
            total += cost(job, node, weights)
        if total != a.cost:
            return Invalid.COST_MISMATCH
    for u in unassigned:
        if u.job_id not in job_by_id:
            return Invalid.UNKNOWN_JOB
        if u.job_id in seen:
            return Invalid.DUPLICATE_JOB
        seen.add(u.job_id)
    if len(seen) != len(job_by_id):
        return Invalid.MISSING_JOB
    for u in unassigned:
        job = job_by_id[u.job_id]
        expected = unfit_reason(job, nodes, weights)
        if expected is not None:
            if u.reason != expected:
                return Invalid.WRONG_REASON
            continue
        if u.reason != Reason.NO_CAPACITY:
            return Invalid.WRONG_REASON
        operators = {n.operator for n in nodes if fits(job, n, weights, left[n.node_id]) is None}
        if len(operators) >= job.redundancy:
            return Invalid.COULD_BE_ASSIGNED
    return None
