"""The market's vocabulary and its first question, does this node fit this job and at what
cost: the records a schedule is made of (`JobRequest`, `NodeOffer`, `Assignment`,
`Unassigned` with its `Reason` code), the committed scoring policy (`ScoreWeights`), `fits`
and `cost` one pair at a time, and `_Prepared`, the same checks unrolled over all offers
for a scheduling call.

Pure and integer-only like the rest of `consensus.market`: every member computes the same
fit, the same reason and the same cost from the same committed inputs. See
`consensus.market.scheduler` for how a schedule is searched.
"""

from __future__ import annotations

import enum
import functools
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter

import numpy as np
import numpy.typing as npt

from p2p.announcements import GpuSpec

I64 = npt.NDArray[np.int64]
PERMILLE = 1000
_INT64_SAFE = 1 << 62
"""Above this, `_Prepared.candidate_table` leaves int64 for Python ints (the one-job path)."""
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


@dataclass(frozen=True)
class CandidateTable:
    """Per job (in the order asked): its `_Prepared.candidates` list, kept flat (job j's
    (cost, node index) pairs are `costs[starts[j]:starts[j + 1]]` with `nodes` alike) and
    built into a list or a node -> cost map only when asked (`list_of`, `cost_map`): a call
    reads those of a few hundred jobs of a thousand. Also per job: its fitting nodes as a
    bit set (bit i: node index i), and how many distinct operators they belong to."""

    costs: list[int]
    nodes: list[int]
    starts: list[int]
    """len(jobs) + 1 offsets into `costs` and `nodes`."""
    bits: list[int]
    operators: list[int]
    closest: dict[int, Reason] = field(default_factory=dict, compare=False)
    """For every job no node fits: `unfit_reason`'s answer (the closest node's reason)."""
    arrays: tuple[I64, I64, I64] | None = field(default=None, compare=False)
    """`costs`, `nodes` and `starts` as int64 arrays, when the table was built from arrays
    (the compiled chain search reads these; None: built one job at a time, for values
    beyond int64, and the chain search runs in Python)."""

    def list_of(self, j: int) -> list[tuple[int, int]]:
        a, b = self.starts[j], self.starts[j + 1]
        return list(zip(self.costs[a:b], self.nodes[a:b], strict=True))

    def cost_map(self, j: int) -> dict[int, int]:
        a, b = self.starts[j], self.starts[j + 1]
        return dict(zip(self.nodes[a:b], self.costs[a:b], strict=True))

    def count(self, j: int) -> int:
        return self.starts[j + 1] - self.starts[j]

    @classmethod
    def of_lists(
        cls, lists: list[list[tuple[int, int]]], operator: Sequence[bytes]
    ) -> CandidateTable:
        """The table derived from the lists, one job at a time."""
        return cls(
            costs=[c for cands in lists for c, _ in cands],
            nodes=[i for cands in lists for _, i in cands],
            starts=list(itertools.accumulate((len(cands) for cands in lists), initial=0)),
            bits=[sum(1 << i for _, i in cands) for cands in lists],
            operators=[len({operator[i] for _, i in cands}) for cands in lists],
        )


_JOB_FIELDS = attrgetter(
    "submitter", "submitter_region", "gpu_model", "min_memory_mib", "gpus_needed", "region",
    "max_rtt_ms", "max_price_per_gpu_hour",
)  # fmt: skip
"""The fields of a `JobRequest` that `_Prepared.candidate_table` reads, as one tuple."""


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
        self._matching_rows: dict[tuple[str | None, int], np.ndarray] = {}
        self._has_model: dict[str | None, list[bool]] = {}
        self._has_model_rows: dict[str | None, np.ndarray] = {}
        self._roomy: dict[tuple[str | None, int, int], list[int]] = {}
        self._rtts: dict[tuple[bytes, str | None], list[int]] = {}
        self._base: dict[tuple[bytes, str | None], list[int]] = {}

    def matching(self, model: str | None, min_memory_mib: int) -> list[int]:
        """Per node, its GPUs of `model` (any, if None) with at least `min_memory_mib` each."""
        key = (model, min_memory_mib)
        found = self._matching.get(key)
        if found is None:
            found = self._matching[key] = self._matching_row(model, min_memory_mib).tolist()
        return found

    def _matching_row(self, model: str | None, min_memory_mib: int) -> np.ndarray:
        """`matching` as an int64 row over the nodes, from the spec columns."""
        key = (model, min_memory_mib)
        row = self._matching_rows.get(key)
        if row is None:
            models, memory, count, model_ids = self._spec_columns
            ok = memory >= max(-_INT64_SAFE, min(min_memory_mib, _INT64_SAFE))  # int64 asks
            if model is not None:
                ok &= models == model_ids.get(model, -1)
            row = self._matching_rows[key] = (count * ok).sum(axis=1)
        return row

    def _roomy_rows(self, keys: list[tuple[str | None, int, int]]) -> np.ndarray:
        """`roomy` of each (model, memory, need) ask as a boolean (asks x nodes) array, from
        `_matching_row`'s arrays. Each need must be below 2**62 (`candidate_table` checks);
        free GPUs are bounded by the GPUs offered."""
        pairs = {pair: k for k, pair in enumerate(dict.fromkeys(key[:2] for key in keys))}
        matching = np.array([self._matching_row(*pair) for pair in pairs], np.int64)
        row = np.array([pairs[key[:2]] for key in keys], np.int64)
        need = np.array([key[2] for key in keys], np.int64)[:, None]
        return (matching[row] >= need) & (self._free_gpus[None, :] >= need)

    @functools.cached_property
    def _free_gpus(self) -> np.ndarray:
        return np.array(self.free, np.int64)

    @functools.cached_property
    def _region_ids(self) -> dict[str, int]:
        """The offers' regions numbered, for comparing regions as integers."""
        return {r: k for k, r in enumerate(sorted(set(self.region)))}

    @functools.cached_property
    def _node_regions(self) -> np.ndarray:
        ids = self._region_ids
        return np.array([ids[r] for r in self.region], np.int64)

    @functools.cached_property
    def _spec_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
        """The offers' GPU specs as int64 (nodes x most specs per node) columns: model id
        (-2 pads), memory, count (0 pads), and the ids of the (lower-cased) models. A
        backlog asks a few dozen (model, memory) pairs, and `matching` answers each with a
        few array operations instead of a Python pass over every node's specs. `GpuSpec`
        bounds count (1,024) and memory (2**24 MiB) when it is built, so the sums stay far
        inside int64."""
        widest = max((len(n.gpus) for n in self.nodes), default=0)
        shape = (len(self.nodes), max(widest, 1))
        models = np.full(shape, -2, np.int64)
        memory = np.zeros(shape, np.int64)
        count = np.zeros(shape, np.int64)
        ids: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for s, g in enumerate(node.gpus):
                models[i, s] = ids.setdefault(g.model.lower(), len(ids))
                memory[i, s], count[i, s] = g.memory_mib, g.count
        return models, memory, count, ids

    def roomy(self, model: str | None, min_memory_mib: int, need: int) -> list[int]:
        """Indices of the nodes with `need` matching GPUs and as many announced free: the
        job-independent part of `fits`, shared by every job asking the same (a backlog of a
        thousand jobs asks a few dozen different things)."""
        key = (model, min_memory_mib, need)
        found = self._roomy.get(key)
        if found is None:
            free = self.free
            found = [i for i, m in enumerate(self.matching(model, min_memory_mib))
                     if m >= need and free[i] >= need]  # fmt: skip
            self._roomy[key] = found
        return found

    def rtts(self, submitter: bytes, submitter_region: str | None) -> list[int]:
        """`rtt_estimate` from every node to this submitter, computed once per submitter."""
        key = (submitter, submitter_region)
        found = self._rtts.get(key)
        if found is None:
            w = self.weights
            same_ms, unknown_ms = w.same_region_rtt_ms, w.unknown_rtt_ms
            found = [
                rtt.get(submitter, same_ms if submitter_region == region else unknown_ms)
                for rtt, region in zip(self.rtt, self.region, strict=True)
            ]
            self._rtts[key] = found
        return found

    def _rtt_table(self, subs: list[tuple[bytes, str | None]]) -> np.ndarray | None:
        """`rtts` of every submitter in `subs` at once, as an int64 (submitters x nodes)
        array: the region guess in one comparison, then every measured RTT of every node laid
        out flat (submitter, ms, node) and written in one indexed assignment (a backlog's
        hundred submitters and a hundred nodes are ten thousand lookups one by one). None
        when an RTT could leave int64 (RTTs are never negative: `NodeOffer` checks)."""
        w = self.weights
        same_ms, unknown_ms = w.same_region_rtt_ms, w.unknown_rtt_ms
        who = list(itertools.chain.from_iterable(self.rtt))
        ms = list(itertools.chain.from_iterable(rtt.values() for rtt in self.rtt))
        try:
            values = np.array(ms, np.int64)
        except OverflowError:
            return None
        if max(int(values.max(initial=0)), abs(same_ms), abs(unknown_ms)) >= _INT64_SAFE:
            return None
        node_region, region_ids = self._node_regions, self._region_ids
        sub_region = np.array(
            [-1 if r is None else region_ids.get(r, -1) for _, r in subs], np.int64
        )
        table = np.where(sub_region[:, None] == node_region[None, :], same_ms, unknown_ms)
        table = table.astype(np.int64)
        row_of: dict[bytes, int] = {}
        also: list[tuple[int, bytes]] = []  # a submitter asking from a second region
        for k, (submitter, _) in enumerate(subs):
            if row_of.setdefault(submitter, k) != k:
                also.append((k, submitter))
        rows = np.fromiter(map(row_of.get, who, itertools.repeat(-1)), np.int64, len(who))
        cols = np.repeat(np.arange(len(self.rtt)), [len(rtt) for rtt in self.rtt])
        asked = rows >= 0  # measured RTTs to submitters of this backlog
        table[rows[asked], cols[asked]] = values[asked]
        for k, submitter in also:
            table[k] = table[row_of[submitter]]  # the measured RTTs are the first row's...
            guess = np.where(node_region == sub_region[k], same_ms, unknown_ms)
            unmeasured = [submitter not in rtt for rtt in self.rtt]
            table[k, unmeasured] = guess[unmeasured]  # ... the guesses are its own region's
        return table

    def base_costs(self, submitter: bytes, submitter_region: str | None) -> list[int]:
        """Per node, the part of `cost` that is not price: RTT to this submitter and the
        node's static part, computed once per submitter."""
        key = (submitter, submitter_region)
        found = self._base.get(key)
        if found is None:
            w_rtt = self.weights.rtt
            found = [w_rtt * r + s for r, s in zip(self.rtts(*key), self.static, strict=True)]
            self._base[key] = found
        return found

    def candidates(self, job: JobRequest) -> list[tuple[int, int]]:
        """(cost, node index) of every node `fits` accepts with announced free GPUs, cheapest
        first, ties by node id. The same checks as `fits`, unrolled over columns (the tests
        compare the two on random instances)."""
        region, price_cap, rtt_cap = job.region, job.max_price_per_gpu_hour, job.max_rtt_ms
        base = self.base_costs(job.submitter, job.submitter_region)
        prices = self.price
        w_price = self.weights.price * job.gpus_needed
        roomy = self.roomy(_lower(job.gpu_model), job.min_memory_mib, job.gpus_needed)
        if region is None and rtt_cap is None:
            out = [(w_price * prices[i] + base[i], i) for i in roomy if prices[i] <= price_cap]
        else:
            rtts, regions = self.rtts(job.submitter, job.submitter_region), self.region
            out = [
                (w_price * prices[i] + base[i], i)
                for i in roomy
                if prices[i] <= price_cap
                and (region is None or regions[i] == region)
                and (rtt_cap is None or rtts[i] <= rtt_cap)
            ]
        out.sort()
        return out

    def candidate_table(self, jobs: Sequence[JobRequest]) -> CandidateTable:
        """`candidates` of every job, and what the scheduler derives from each list, for all
        jobs at once as integer numpy arrays (jobs x nodes): a backlog of a thousand jobs on a
        hundred offers is a hundred thousand fit checks and costs, which took a third of a
        call one job at a time.

        Exact: int64 sums and comparisons, a stable sort by cost (ties by node index, as the
        tuples sort), operators counted by a boolean "any" per operator (no floats). Values
        that could overflow int64 (absurd prices, GPU counts, RTTs or weights) take the
        one-job-at-a-time path instead (`CandidateTable.of_lists`), which gives the same table
        (tests compare the two)."""
        n = len(self.nodes)
        if not jobs or not n:
            return self._table_one_by_one(jobs)
        # The jobs' fields as columns (one C-level pass per field, not a Python loop over
        # jobs), and the distinct submitters and asks numbered in order of first appearance.
        submitter, sub_region, model, memory, needs, job_region, max_rtt, max_price = zip(
            *map(_JOB_FIELDS, jobs), strict=True
        )
        lowered = {m: _lower(m) for m in set(model)}
        sub_keys = list(zip(submitter, sub_region, strict=True))
        ask_keys = list(zip(map(lowered.__getitem__, model), memory, needs, strict=True))
        subs = {key: k for k, key in enumerate(dict.fromkeys(sub_keys))}
        keys = {key: k for k, key in enumerate(dict.fromkeys(ask_keys))}
        regions = self._region_ids
        rtt_caps = [-1 if c is None else c for c in max_rtt]
        rtts = self._rtt_table(list(subs))
        w_price, w_rtt = self.weights.price, self.weights.rtt
        if rtts is None:
            return self._table_one_by_one(jobs)
        rtt_widest = int(np.abs(rtts).max())
        if max(abs(w_rtt), abs(w_rtt) * rtt_widest + max(map(abs, self.static))) >= _INT64_SAFE:
            return self._table_one_by_one(jobs)
        base = w_rtt * rtts + np.array(self.static, np.int64)[None, :]  # `base_costs`, all
        widest = int(np.abs(base).max())
        most_gpus = max(needs)
        largest = abs(w_price) * most_gpus * max(self.price) + widest
        if max(largest, max(self.price), max(rtt_caps), most_gpus,
               abs(w_price)) >= _INT64_SAFE:  # fmt: skip
            return self._table_one_by_one(jobs)
        sub_of, key_of, need, cap, region, rtt_cap = np.array([
            list(map(subs.__getitem__, sub_keys)),
            list(map(keys.__getitem__, ask_keys)),
            needs,
            [min(c, _INT64_SAFE) for c in max_price],
            [-1 if r is None else regions.get(r, -2) for r in job_region],
            rtt_caps,
        ], np.int64)  # fmt: skip
        roomy = self._roomy_rows(list(keys))
        price = np.array(self.price, np.int64)
        fit = roomy[key_of] & (price[None, :] <= cap[:, None])
        if (region != -1).any():
            fit &= (region[:, None] == -1) | (self._node_regions[None, :] == region[:, None])
        if (rtt_cap >= 0).any():
            fit &= (rtt_cap[:, None] < 0) | (rtts[sub_of] <= rtt_cap[:, None])
        cost = (w_price * need)[:, None] * price[None, :] + base[sub_of]
        cost[~fit] = _INT64_SAFE
        order = np.argsort(cost, axis=1, kind="stable")
        ranked = np.take_along_axis(cost, order, axis=1)
        kept = ranked < _INT64_SAFE  # each row's fitting nodes come first, in cost order
        starts = np.zeros(len(jobs) + 1, np.int64)
        np.cumsum(kept.sum(axis=1), out=starts[1:])
        flat_costs, flat_nodes = ranked[kept], order[kept].astype(np.int64)
        width = (n + 7) // 8
        packed = np.packbits(fit, axis=1, bitorder="little").tobytes()
        nodes_of_operator: dict[bytes, list[int]] = {}
        for i, op in enumerate(self.operator):
            nodes_of_operator.setdefault(op, []).append(i)
        operators = np.zeros(len(jobs), np.int64)
        for cols in nodes_of_operator.values():  # an operator counts once if any node fits
            operators += fit[:, cols].any(axis=1)
        unfit = np.flatnonzero(operators == 0)
        closest = self._closest_reasons(
            list(keys), key_of[unfit], need[unfit], cap[unfit], region[unfit], rtt_cap[unfit],
            rtts[sub_of[unfit]], price,
        )  # fmt: skip
        return CandidateTable(
            costs=flat_costs.tolist(),
            nodes=flat_nodes.tolist(),
            starts=starts.tolist(),
            bits=[
                int.from_bytes(packed[j * width : (j + 1) * width], "little")
                for j in range(len(jobs))
            ],
            operators=operators.tolist(),
            closest=dict(zip(unfit.tolist(), closest, strict=True)),
            arrays=(flat_costs, flat_nodes, starts),
        )

    def _table_one_by_one(self, jobs: Sequence[JobRequest]) -> CandidateTable:
        """`candidate_table` from `candidates` and `unfit_reason`, one job at a time: the path
        for values beyond int64 (and for no jobs or no offers), with the same answers."""
        lists = [self.candidates(job) for job in jobs]
        closest = {}
        for j, job in enumerate(jobs):
            reason = None if lists[j] else self.unfit_reason(job)  # no operator fits: a Reason
            if reason is not None:
                closest[j] = reason
        return replace(CandidateTable.of_lists(lists, self.operator), closest=closest)

    def _closest_reasons(
        self,
        keys: list[tuple[str | None, int, int]],
        key_of: np.ndarray,
        need: np.ndarray,
        cap: np.ndarray,
        region: np.ndarray,
        rtt_cap: np.ndarray,
        rtt: np.ndarray,
        price: np.ndarray,
    ) -> list[Reason]:
        """`unfit_reason` of jobs no node fits, all at once, from `candidate_table`'s columns
        for those jobs: per node the first check of `fits` it fails (`Reason` is in that
        order), per job the largest, the node that came closest. An overloaded backlog has
        dozens of such jobs, each a Python pass over every node one at a time. The checks
        below are `fits`' (and `unfit_reason`'s) in their order: change the three together."""
        if not len(key_of):
            return []
        has = np.array([self._has_model_row(model) for model, _, _ in keys])
        matching = np.array([self._matching_row(model, memory) for model, memory, _ in keys])
        m, asked, node_region = matching[key_of], need[:, None], self._node_regions
        checks = [
            ~has[key_of],
            m == 0,
            m < asked,
            (region[:, None] != -1) & (node_region[None, :] != region[:, None]),
            price[None, :] > cap[:, None],
            (rtt_cap[:, None] >= 0) & (rtt > rtt_cap[:, None]),
            self._free_gpus[None, :] < asked,
        ]
        codes = [Reason.NO_FIT_MODEL, Reason.NO_FIT_MEMORY, Reason.NOT_ENOUGH_GPUS,
                 Reason.NO_FIT_REGION, Reason.PRICE_TOO_LOW, Reason.RTT_TOO_HIGH,
                 Reason.NO_CAPACITY]  # fmt: skip
        first_failed = np.select(checks, [int(c) for c in codes], default=int(Reason.NO_NODES))
        return [Reason(c) for c in first_failed.max(axis=1).tolist()]

    def unfit_reason(self, job: JobRequest) -> Reason | None:
        """`unfit_reason(job, nodes)`, unrolled over the columns like `candidates` (the
        tests compare the two): the scheduler asks it of every job short of operators, which
        in an overloaded market is many."""
        if not self.nodes:
            return Reason.NO_NODES
        need = job.gpus_needed
        model = _lower(job.gpu_model)
        region, price_cap, rtt_cap = job.region, job.max_price_per_gpu_hour, job.max_rtt_ms
        rtts = self.rtts(job.submitter, job.submitter_region)
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
                if rtt_cap is not None and rtts[i] > rtt_cap:
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
        """Per node, whether it offers any GPU of `model` (lower-cased; None: every node)."""
        found = self._has_model.get(model)
        if found is None:
            found = self._has_model[model] = self._has_model_row(model).tolist()
        return found

    def _has_model_row(self, model: str | None) -> np.ndarray:
        """`has_model` as a boolean row over the nodes, from the spec columns."""
        row = self._has_model_rows.get(model)
        if row is None:
            if model is None:
                row = np.ones(len(self.nodes), np.bool_)
            else:
                models, _, _, model_ids = self._spec_columns
                row = (models == model_ids.get(model, -1)).any(axis=1)  # -1: no spec has it
            self._has_model_rows[model] = row
        return row
