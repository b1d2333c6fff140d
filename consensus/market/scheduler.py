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
tests and `bench/scheduler.py` measure the result against the exact optimum (scipy).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from p2p.announcements import GpuSpec

PERMILLE = 1000
SPEED_CAP_PERMILLE = 2000
"""Speeds above twice nominal score as twice nominal: a node cannot buy unbounded priority by
reporting (or briefly measuring) an absurd speed."""


class Reason(enum.IntEnum):
    """Why a job was not assigned. The codes are committed, so they never change meaning.

    The values 1..7 follow the order in which `fits` checks a node: when no node fits, the job
    gets the reason of the node that came closest (passed the most checks), which is the most
    useful thing to tell a submitter ("your price is too low", not "wrong model" because one
    node far away has other GPUs)."""

    NO_NODES = 0
    """There are no offers at all."""
    NO_FIT_MODEL = 1
    """No GPUs of the requested model."""
    NO_FIT_MEMORY = 2
    """The model is there, but no GPU of it has the memory asked for."""
    NOT_ENOUGH_GPUS = 3
    """Fitting GPUs exist, but fewer than `gpus_needed` on any one node."""
    NO_FIT_REGION = 4
    PRICE_TOO_LOW = 5
    """The job's `max_price_per_gpu_hour` is below the node's asking price."""
    RTT_TOO_HIGH = 6
    """Measured (or estimated) round-trip time to the submitter above the job's `max_rtt_ms`."""
    NO_CAPACITY = 7
    """Nodes fit, but not enough of them (on distinct operators) have free GPUs left."""
    NOT_ENOUGH_OPERATORS = 8
    """Fitting nodes exist, but on fewer than k distinct operators."""


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


@dataclass(frozen=True)
class JobRequest:
    """A pending job: k replicas, each needing `gpus_needed` GPUs on one node."""

    job_id: bytes
    submitter: bytes
    gpus_needed: int = 1
    min_memory_mib: int = 0
    gpu_model: str | None = None
    """Exact model name, case-insensitive; None takes any model."""
    region: str | None = None
    """Where the job must run; None runs anywhere."""
    max_rtt_ms: int | None = None
    """Round-trip time limit between the node and the submitter; None has no limit."""
    redundancy: int = 1
    """k: the number of replicas, each on a distinct operator."""
    max_price_per_gpu_hour: int = 2**63
    submitter_region: str | None = None
    """Only for the RTT fallback when no RTT to the submitter has been measured."""

    def __post_init__(self) -> None:
        if self.gpus_needed < 1 or self.redundancy < 1:
            raise ValueError("a job needs at least one GPU and at least one replica")
        if self.min_memory_mib < 0 or self.max_price_per_gpu_hour < 0:
            raise ValueError("memory and price must not be negative")
        if self.max_rtt_ms is not None and self.max_rtt_ms < 0:
            raise ValueError("max_rtt_ms must not be negative")


@dataclass(frozen=True)
class NodeOffer:
    """A node's offer as the market sees it: announced inventory and price, plus what the
    network measured about it (reputation, speed against its class's nominal, RTTs)."""

    node_id: bytes
    operator: bytes
    gpus: tuple[GpuSpec, ...]
    free_gpus: int
    region: str
    price_per_gpu_hour: int
    reputation_permille: int = PERMILLE
    speed_permille: int = PERMILLE
    """Measured throughput against the nominal of its GPU class (1000 = as rated)."""
    rtt_ms: tuple[tuple[bytes, int], ...] = ()
    """(submitter, measured round-trip ms) pairs, gossiped; a tuple so the offer is hashable."""
    _rtt: dict[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.free_gpus < 0 or self.free_gpus > sum(g.count for g in self.gpus):
            raise ValueError("free_gpus must be between 0 and the GPUs offered")
        if not 0 <= self.reputation_permille <= PERMILLE or self.speed_permille < 0:
            raise ValueError("reputation must be 0..1000 and speed non-negative")
        if self.price_per_gpu_hour < 0 or any(ms < 0 for _, ms in self.rtt_ms):
            raise ValueError("price and RTTs must not be negative")
        object.__setattr__(self, "_rtt", dict(self.rtt_ms))

    @property
    def gpu_total(self) -> int:
        return sum(g.count for g in self.gpus)

    def matching_gpus(self, job: JobRequest) -> int:
        """GPUs of the job's model (any, if none asked) with at least its memory."""
        return _matching(self.gpus, _lower(job.gpu_model), job.min_memory_mib)


@dataclass(frozen=True)
class ScoreWeights:
    """The policy of `cost`; committed like any other parameter, so every member scores
    alike. Each term is a non-negative integer, lower is better:

    - price: `price_per_gpu_hour * gpus_needed` (what the submitter pays per hour),
    - rtt: round-trip ms to the submitter,
    - reputation: `1000 - reputation_permille`,
    - speed: `2000 - min(speed_permille, 2000)` (faster than nominal is rewarded, up to 2x),
    - load: permille of the node's GPUs already busy (prefer free capacity: spread load).
    """

    price: int = 1
    rtt: int = 20
    reputation: int = 4
    speed: int = 2
    load: int = 1
    same_region_rtt_ms: int = 20
    """RTT assumed when none was measured and node and submitter declare the same region."""
    unknown_rtt_ms: int = 150
    """RTT assumed when none was measured and the regions differ or are not known."""
    unassigned_penalty: int = 10**9
    """What one unplaced replica costs when scoring a whole schedule (`total_cost`)."""


DEFAULT_WEIGHTS = ScoreWeights()


@dataclass(frozen=True)
class Assignment:
    job_id: bytes
    node_ids: tuple[bytes, ...]
    """One node per replica, in node id order."""
    cost: int
    """The sum of `cost(job, node)` over the replicas."""


@dataclass(frozen=True)
class Unassigned:
    job_id: bytes
    reason: Reason


def _lower(model: str | None) -> str | None:
    return model.lower() if model is not None else None


def _matching(gpus: Iterable[GpuSpec], model: str | None, min_memory_mib: int) -> int:
    return sum(
        g.count
        for g in gpus
        if g.memory_mib >= min_memory_mib and (model is None or g.model.lower() == model)
    )


def rtt_estimate(job: JobRequest, node: NodeOffer, weights: ScoreWeights) -> int:
    """The measured RTT between node and submitter; without one, a region-based guess."""
    measured = node._rtt.get(job.submitter)
    if measured is not None:
        return measured
    if job.submitter_region is not None and job.submitter_region == node.region:
        return weights.same_region_rtt_ms
    return weights.unknown_rtt_ms


def fits(
    job: JobRequest,
    node: NodeOffer,
    weights: ScoreWeights = DEFAULT_WEIGHTS,
    free_gpus: int | None = None,
) -> Reason | None:
    """None if one replica of `job` can run on `node` now, else the first check that fails.

    `free_gpus` overrides the announced free count (the scheduler passes what earlier
    assignments in the same block left). The order of the checks is the order of `Reason`.
    """
    model = _lower(job.gpu_model)
    if model is not None and not any(g.model.lower() == model for g in node.gpus):
        return Reason.NO_FIT_MODEL
    matching = node.matching_gpus(job)
    if matching == 0:
        return Reason.NO_FIT_MEMORY
    if matching < job.gpus_needed:
        return Reason.NOT_ENOUGH_GPUS
    if job.region is not None and node.region != job.region:
        return Reason.NO_FIT_REGION
    if node.price_per_gpu_hour > job.max_price_per_gpu_hour:
        return Reason.PRICE_TOO_LOW
    if job.max_rtt_ms is not None and rtt_estimate(job, node, weights) > job.max_rtt_ms:
        return Reason.RTT_TOO_HIGH
    free = node.free_gpus if free_gpus is None else free_gpus
    if free < job.gpus_needed:
        return Reason.NO_CAPACITY
    return None


def _static_cost(node: NodeOffer, weights: ScoreWeights) -> int:
    """The part of `cost` that does not depend on the job."""
    total = node.gpu_total
    load = (total - node.free_gpus) * PERMILLE // total if total else PERMILLE
    speed = min(node.speed_permille, SPEED_CAP_PERMILLE)
    return (
        weights.reputation * (PERMILLE - node.reputation_permille)
        + weights.speed * (SPEED_CAP_PERMILLE - speed)
        + weights.load * load
    )


def cost(job: JobRequest, node: NodeOffer, weights: ScoreWeights = DEFAULT_WEIGHTS) -> int:
    """The integer score of one replica of `job` on `node`; lower is better.

    It uses the load the node announced, not what this block's earlier assignments added, so
    a replica's cost does not depend on the order jobs are placed in: the proposer's figures
    can be checked one by one, and the schedule's total is a fixed linear objective that an
    exact solver can be compared on."""
    return (
        weights.price * node.price_per_gpu_hour * job.gpus_needed
        + weights.rtt * rtt_estimate(job, node, weights)
        + _static_cost(node, weights)
    )


def unfit_reason(
    job: JobRequest, nodes: Sequence[NodeOffer], weights: ScoreWeights = DEFAULT_WEIGHTS
) -> Reason | None:
    """Why `job` cannot be placed on these offers even before anything else is placed, or
    None if it can (its k replicas fit, with announced free GPUs, on k distinct operators)."""
    if not nodes:
        return Reason.NO_NODES
    operators: set[bytes] = set()
    closest = Reason.NO_NODES
    for node in nodes:
        reason = fits(job, node, weights)
        if reason is None:
            operators.add(node.operator)
        elif reason > closest:
            closest = reason
    return _unfit_verdict(closest, len(operators), job.redundancy)


def _unfit_verdict(closest: Reason, operators: int, redundancy: int) -> Reason | None:
    """No operator fits: the closest node's reason; too few: NOT_ENOUGH_OPERATORS."""
    if operators == 0:
        return closest
    if operators < redundancy:
        return Reason.NOT_ENOUGH_OPERATORS
    return None


class _Prepared:
    """The offers in columns, sorted by node id, with the job-independent work done once per
    call: a job then costs one tight pass over the nodes and one sort of those that fit."""

    def __init__(self, nodes: Sequence[NodeOffer], weights: ScoreWeights) -> None:
        ordered = sorted(nodes, key=lambda n: n.node_id)
        if len({n.node_id for n in ordered}) != len(ordered):
            raise ValueError("node ids must be distinct")
        self.nodes = ordered
        self.weights = weights
        self.region = [n.region for n in ordered]
        self.price = [n.price_per_gpu_hour for n in ordered]
        self.free = [n.free_gpus for n in ordered]
        self.operator = [n.operator for n in ordered]
        self.rtt = [n._rtt for n in ordered]
        self.static = [_static_cost(n, weights) for n in ordered]
        self._matching: dict[tuple[str | None, int], list[int]] = {}
        self._has_model: dict[str | None, list[bool]] = {}

    def matching(self, model: str | None, min_memory_mib: int) -> list[int]:
        key = (model, min_memory_mib)
        found = self._matching.get(key)
        if found is None:
            found = [_matching(n.gpus, model, min_memory_mib) for n in self.nodes]
            self._matching[key] = found
        return found

    def candidates(self, job: JobRequest) -> list[tuple[int, int]]:
        """(cost, node index) of every node `fits` accepts with announced free GPUs, cheapest
        first, ties by node id. The same checks as `fits`, unrolled over columns (the tests
        compare the two on random instances)."""
        w = self.weights
        need = job.gpus_needed
        region, price_cap, rtt_cap = job.region, job.max_price_per_gpu_hour, job.max_rtt_ms
        submitter, same_region = job.submitter, job.submitter_region
        matching = self.matching(_lower(job.gpu_model), job.min_memory_mib)
        prices, regions, frees, rtts, statics = (
            self.price, self.region, self.free, self.rtt, self.static,
        )  # fmt: skip
        w_price, w_rtt = w.price * need, w.rtt
        same_ms, unknown_ms = w.same_region_rtt_ms, w.unknown_rtt_ms
        out = []
        for i, m in enumerate(matching):
            if m < need or frees[i] < need:
                continue
            p = prices[i]
            if p > price_cap or (region is not None and regions[i] != region):
                continue
            rtt = rtts[i].get(submitter)
            if rtt is None:
                rtt = same_ms if same_region == regions[i] else unknown_ms
            if rtt_cap is not None and rtt > rtt_cap:
                continue
            out.append((w_price * p + w_rtt * rtt + statics[i], i))
        out.sort()
        return out

    def unfit_reason(self, job: JobRequest) -> Reason | None:
        """`unfit_reason(job, nodes)`, unrolled over the columns like `candidates` (the
        tests compare the two): the scheduler asks it of every job short of operators, which
        in an overloaded market is many."""
        if not self.nodes:
            return Reason.NO_NODES
        w = self.weights
        need = job.gpus_needed
        model = _lower(job.gpu_model)
        region, price_cap, rtt_cap = job.region, job.max_price_per_gpu_hour, job.max_rtt_ms
        submitter, same_region = job.submitter, job.submitter_region
        has_model = self.has_model(model)
        matching = self.matching(model, job.min_memory_mib)
        closest = Reason.NO_NODES
        operators: set[bytes] = set()
        for i, m in enumerate(matching):
            if not has_model[i]:
                reason = Reason.NO_FIT_MODEL
            elif m == 0:
                reason = Reason.NO_FIT_MEMORY
            elif m < need:
                reason = Reason.NOT_ENOUGH_GPUS
            elif region is not None and self.region[i] != region:
                reason = Reason.NO_FIT_REGION
            elif self.price[i] > price_cap:
                reason = Reason.PRICE_TOO_LOW
            else:
                rtt = self.rtt[i].get(submitter)
                if rtt is None:
                    rtt = (
                        w.same_region_rtt_ms if same_region == self.region[i] else w.unknown_rtt_ms
                    )
                if rtt_cap is not None and rtt > rtt_cap:
                    reason = Reason.RTT_TOO_HIGH
                elif self.free[i] < need:
                    reason = Reason.NO_CAPACITY
                else:
                    operators.add(self.operator[i])
                    continue
            if reason > closest:
                closest = reason
        return _unfit_verdict(closest, len(operators), job.redundancy)

    def has_model(self, model: str | None) -> list[bool]:
        found = self._has_model.get(model)
        if found is None:
            found = [
                model is None or any(g.model.lower() == model for g in n.gpus) for n in self.nodes
            ]
            self._has_model[model] = found
        return found


REPAIR_BUDGET = 12_000
"""Inner steps the repair passes may take per call, shared by the job orders tried: it bounds
the decision time whatever the instance, and being a count (not a clock) it stops at the
same place on every member."""
IMPROVE_BUDGET = 12_000
"""The same bound for the improvement pass (run once, on the best order's result)."""
WORK_BUDGET = 150_000
"""Steps one call may take in all. The construction (candidate lists, the greedy passes of
every order, repair, swaps) is counted against it and the improvement pass's share is kept
aside; the ruin-and-recreate search gets what is left, less `TRADE_BUDGET`. So a small
market, cheap to construct, is searched hard, and a large one, whose construction is most of
the bound, is decided in about the same time (bench/scheduler.py measures both)."""
NODE_CHECKS_PER_STEP = 3
"""Node checks in `_Prepared.candidates` per step: a check costs about a third of a chain
step."""
RUIN_ROUND_STEPS = 50
"""The fixed cost of one ruin-and-recreate round (draws, marks, bookkeeping) in steps."""
TRADE_BUDGET = 20_000
"""The share of what `WORK_BUDGET` leaves after construction that is kept for the final
pass of trades (`_trade_in`) on the best schedule the ruin-and-recreate search found (plus
what the search did not use): the search is a random walk that can end one trade short of
a better schedule, and the pass tries every trade in turn from where it ended."""


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
    ) -> None:
        self.prep = prep
        self.left = list(prep.free)
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

    def put(self, j: int, need: int, i: int, c: int) -> None:
        self.left[i] -= need
        self.on_node[i][j] = c
        self.nodes_of.setdefault(j, []).append(i)
        self.delta += c
        if self.journal is not None:
            self.journal.append((0, j, need, i, c))

    def take(self, j: int, need: int, i: int) -> int:
        self.left[i] += need
        placed = self.nodes_of[j]
        placed.remove(i)
        if not placed:
            del self.nodes_of[j]
        c = self.on_node[i].pop(j)
        self.delta -= c
        if self.journal is not None:
            self.journal.append((1, j, need, i, c))
        return c

    def move(self, j: int, need: int, src: int, dst: int) -> None:
        self.left[src] += need
        old = self.on_node[src].pop(j)
        self.left[dst] -= need
        new = self.on_node[dst][j] = self.costs[j][dst]
        placed = self.nodes_of[j]
        placed[placed.index(src)] = dst
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

    Deterministic: the result depends on the inputs' content, never on their order."""
    by_id = sorted(jobs, key=lambda j: j.job_id)
    if len({j.job_id for j in by_id}) != len(by_id):
        raise ValueError("job ids must be distinct")
    prep = _Prepared(nodes, weights)
    operator = prep.operator
    reasons: dict[int, Reason] = {}
    cands_of: dict[int, list[tuple[int, int]]] = {}
    for j, job in enumerate(by_id):
        cands = prep.candidates(job)
        operators = len({operator[i] for _, i in cands})
        if operators < job.redundancy:
            reason = prep.unfit_reason(job)
            reasons[j] = Reason.NOT_ENOUGH_OPERATORS if reason is None else reason
            continue
        cands_of[j] = cands
    costs = {j: {i: c for c, i in cands} for j, cands in cands_of.items()}
    spent = len(prep.nodes) * len(by_id) // NODE_CHECKS_PER_STEP + len(ORDERS) * sum(
        len(cands) for cands in cands_of.values()
    )
    best: tuple[int, int, _Placement, list[int]] | None = None
    for order_no, order in enumerate(ORDERS):
        state, dropped, used = _place_all(prep, by_id, cands_of, costs, order)
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
        if not _place_greedy(state, j, by_id[j], cands_of[j]):
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


ORDERS = ("fewest_spare_operators", "most_replicas", "most_gpus")
"""The job orders `schedule` tries; it keeps the cheapest result (ties: the first order).
Fewest spare operators first protects the jobs with few places to go; most replicas, and
most GPUs in all, first are first-fit-decreasing, which packs the big jobs that otherwise
find no room left on enough operators. No single order wins on every instance (see
bench/scheduler.py), and the candidate lists, the expensive part, are shared."""


def _order_key(order: str, job: JobRequest, spare: int) -> tuple[int, int]:
    demand = job.gpus_needed * job.redundancy
    if order == "fewest_spare_operators":
        return (spare, -demand)
    if order == "most_replicas":
        return (-job.redundancy, spare)
    return (-demand, spare)


def _place_all(
    prep: _Prepared,
    jobs: list[JobRequest],
    cands_of: dict[int, list[tuple[int, int]]],
    costs: dict[int, dict[int, int]],
    order: str,
) -> tuple[_Placement, list[int], int]:
    """One placement in one job order: greedy, then repair. Returns the state, the job
    numbers left out for want of capacity, and the repair steps taken."""
    state = _Placement(prep, cands_of, costs)
    operator = prep.operator
    queue = []
    for j, cands in cands_of.items():
        spare = len({operator[i] for _, i in cands}) - jobs[j].redundancy
        queue.append((_order_key(order, jobs[j], spare), j))
    queue.sort()
    left_out = [j for _, j in queue if not _place_greedy(state, j, jobs[j], cands_of[j])]
    share = REPAIR_BUDGET // len(ORDERS)
    budget = [share]
    dropped = [j for j in left_out if not _place_with_ejection(state, j, jobs, cands_of[j], budget)]
    return state, sorted(dropped), share - max(budget[0], 0)


def _place_greedy(state: _Placement, j: int, job: JobRequest, cands: list[tuple[int, int]]) -> bool:
    """The k cheapest nodes with room, on distinct operators; places them, or nothing."""
    need, k = job.gpus_needed, job.redundancy
    left, operator = state.left, state.prep.operator
    picked: list[tuple[int, int]] = []
    used: set[bytes] = set()
    for c, i in cands:
        if left[i] >= need and operator[i] not in used:
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

_Chain = tuple[tuple[int, int, int], ...]
"""(moved job, from node, to node) for each move of a repair, in order."""


def _best_chain(
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
    for depth in range(CHAIN_DEPTH):
        grown: dict[tuple[int, int], tuple[int, int, _Chain]] = {}
        deeper = depth + 1 < CHAIN_DEPTH
        for (n, short), (c0, start, chain) in sorted(frontier.items()):
            path = {start, *(dst for _, _, dst in chain)}
            moved = {a for a, _, _ in chain}
            budget[0] -= 1 + len(on_node[n])
            for a, ca in sorted(on_node[n].items()):
                a_need = jobs[a].gpus_needed
                if a == j or a in moved or (a_need < short and not deeper):
                    continue
                a_ops = {operator[x] for x in state.nodes_of[a] if x != n}
                base = c0 - ca
                for cd, dst in state.cands_of[a]:
                    budget[0] -= 1
                    if budget[0] < 0:
                        return best
                    if dst in path or operator[dst] in a_ops:
                        continue
                    value = base + cd
                    if a_need < short:
                        if left[dst] >= a_need:
                            key = (n, short - a_need)
                            held = grown.get(key)
                            if held is None or (value, start) < held[:2]:
                                grown[key] = (value, start, (*chain, (a, n, dst)))
                    elif left[dst] >= a_need:
                        if best is None or (value, start) < best[:2]:
                            best = (value, start, (*chain, (a, n, dst)))
                    elif deeper:
                        key = (dst, a_need - left[dst])
                        held = grown.get(key)
                        if held is None or (value, start) < held[:2]:
                            grown[key] = (value, start, (*chain, (a, n, dst)))
        frontier = grown
    return best


def _place_with_ejection(
    state: _Placement,
    j: int,
    jobs: list[JobRequest],
    cands: list[tuple[int, int]],
    budget: list[int],
) -> bool:
    """Place job `j` replica by replica, each by its cheapest chain (`_best_chain`); all
    undone if k replicas cannot be found."""
    if budget[0] <= 0:
        return False  # with no moves left, room is only what the greedy pass already saw
    job = jobs[j]
    need, k = job.gpus_needed, job.redundancy
    left, operator = state.left, state.prep.operator
    used: set[bytes] = set()
    undo: list[tuple[int, int, int]] = []
    picked: list[int] = []
    while len(picked) < k:
        found = _best_chain(state, j, jobs, cands, used, budget)
        if found is None:
            for a, src, dst in reversed(undo):
                state.move(a, jobs[a].gpus_needed, dst, src)
            for i in picked:
                left[i] += need
            return False
        _, i, chain = found
        for a, src, dst in reversed(chain):  # the last move first: it lands on free room
            state.move(a, jobs[a].gpus_needed, src, dst)
            undo.append((a, src, dst))
        left[i] -= need
        picked.append(i)
        used.add(operator[i])
    for i in picked:
        left[i] += need
        state.put(j, need, i, state.costs[j][i])
    return True


def _swap_in(
    state: _Placement, jobs: list[JobRequest], dropped: list[int], budget: list[int]
) -> list[int]:
    """When jobs must be left out, leave out those that cost most to serve: a single-replica
    job left out takes the node of a placed single-replica job (equal penalty) if it is
    cheaper there, and the displaced job is left out in its place (or placed again if room
    is found for it later). Returns the jobs left out now, in job order."""
    out = set(dropped)
    left, on_node = state.left, state.on_node
    for u in dropped:
        job = jobs[u]
        if job.redundancy != 1:
            continue
        best: tuple[int, int, int] | None = None
        """(saving, node, displaced job)."""
        for c, i in state.cands_of[u]:
            for a, ca in on_node[i].items():
                budget[0] -= 1
                if budget[0] < 0:
                    return sorted(out)
                a_job = jobs[a]
                if a_job.redundancy != 1 or left[i] + a_job.gpus_needed < job.gpus_needed:
                    continue
                option = (ca - c, -i, a)
                if option[0] > 0 and (best is None or option > best):
                    best = option
        if best is not None:
            _, i, a = best
            state.take(a, jobs[a].gpus_needed, -i)
            state.put(u, job.gpus_needed, -i, state.costs[u][-i])
            out.discard(u)
            out.add(a)
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
            if not _place_with_ejection(state, u, jobs, state.cands_of[u], budget):
                state.rollback()
                continue
            back = _place_with_ejection(state, v, jobs, state.cands_of[v], budget)
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
    still_out.update(
        a for a in unplaced if not _place_with_ejection(state, a, jobs, cands_of[a], budget)
    )
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
    if _place_with_ejection(state, u, jobs, state.cands_of[u], budget):
        still_out.discard(u)
    if u in still_out or not _place_with_ejection(state, v, jobs, state.cands_of[v], budget):
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
