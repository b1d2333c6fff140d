"""Market scheduler: decision time and quality against the exact optimum.

Speed: `schedule` on a backlog of 1,000 pending jobs (1-4 GPUs, k = 1..3 replicas) and 100
node offers, repeated on seeded instances; per call the wall time (time.perf_counter, here in
the bench only: the scheduler itself is pure), its p50/p99 and the job decisions per second.
Target (issue, point 2): p99 <= 50 ms per scheduling call. The same-run baseline, call by
call in turn with it: the scheduler as it was before its chain search was compiled
(`python_chain_search`: the same schedules it made then), with the ratio of the p50s.

Quality: the greedy's total cost (assignment costs plus the unassigned penalty per missing
replica) against the exact optimum on seeded instances of several sizes. With k = 1 and one
GPU per job the problem is an assignment problem once each node's free GPUs are expanded into
slots (scipy.optimize.linear_sum_assignment, with one "unassigned" column per job); with
k > 1 and several GPUs per job it is an integer program (scipy.optimize.milp: one binary per
job and node, a binary "placed" per job, capacity rows and one row per job and operator).
Target: within 5% of the optimum.

    python bench/scheduler.py                  # full run
    python bench/scheduler.py --quick --json   # a smoke run of seconds (make test)
    python bench/scheduler.py --first-seed 10 --seeds 20   # quality on other seeds

The default seeds 0-9 are what the figures in the notes were taken on; other seeds show how
far those ten generalise. The tight k <= 3 markets are the hard case: at 300 jobs x 60 nodes,
load 1.2, seeds 0-29 have no instance over 5% and seeds 100-159 have 2 of 60 (worst 1.053);
seeds 200-259, never used to tune the search, have none (mean ratio 1.015, worst 1.042).
Before the chain search was compiled (and charged accordingly) those were 5, 18 and 20.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from consensus.market import chain_kernel, placement, search
from consensus.market.scheduler import (
    DEFAULT_WEIGHTS,
    JobRequest,
    NodeOffer,
    ScoreWeights,
    cost,
    fits,
    schedule,
    total_cost,
    unfit_reason,
)
from p2p.announcements import GpuSpec

P99_TARGET_MS = 50.0
RATIO_TARGET = 1.05
REGIONS = ("eu-west", "eu-central", "us-east", "ap-south")
MODELS = (("H100", 81_920, 2_000), ("A100", 40_960, 1_200), ("A100", 81_920, 1_400),
          ("L40S", 49_152, 800), ("RTX4090", 24_576, 400))  # fmt: skip
"""(model, memory MiB, nominal price per GPU-hour)."""
MEMORY_ASKS = (0, 0, 16_384, 24_576, 40_960, 49_152, 81_920)


def _id(kind: str, seed: int, i: int) -> bytes:
    return hashlib.sha256(f"bench-scheduler/{kind}/{seed}/{i}".encode()).digest()


def region_rtt(a: str, b: str, rng: random.Random) -> int:
    base = 8 if a == b else (25 if a[:2] == b[:2] else 90 if "ap" not in (a + b) else 160)
    return base + rng.randrange(0, base // 2 + 2)


def random_instance(
    seed: int, n_jobs: int, n_nodes: int, *, max_k: int = 3, max_gpus: int = 4,
    load: float | None = 0.8,
) -> tuple[list[JobRequest], list[NodeOffer]]:  # fmt: skip
    """A seeded market: heterogeneous nodes (models, regions, prices, reputation, speed,
    measured RTTs to most submitters) and jobs with mixed constraints. `load` scales the
    demand against the free GPUs on offer (None: exactly `n_jobs` jobs)."""
    rng = random.Random(seed)
    submitters = [(_id("sub", seed, i), rng.choice(REGIONS)) for i in range(max(4, n_jobs // 10))]
    operators = [_id("op", seed, i) for i in range(max(2, n_nodes * 2 // 3))]
    nodes = []
    for i in range(n_nodes):
        picks = rng.sample(MODELS, rng.choice((1, 1, 2)))
        seen: set[str] = set()
        gpus = []
        for model, mem, _ in picks:
            if model not in seen:
                seen.add(model)
                gpus.append(GpuSpec(model, rng.choice((1, 2, 4, 8)), mem))
        nominal = max(p for m, _, p in MODELS if m in seen)
        total = sum(g.count for g in gpus)
        region = rng.choice(REGIONS)
        rtts = tuple(sorted((s, region_rtt(region, r, rng)) for s, r in submitters
                            if rng.random() < 0.7))  # fmt: skip
        nodes.append(NodeOffer(
            node_id=_id("node", seed, i), operator=rng.choice(operators), gpus=tuple(gpus),
            free_gpus=rng.randint(max(1, total // 2), total), region=region,
            price_per_gpu_hour=nominal * rng.randint(80, 130) // 100,
            reputation_permille=rng.randint(600, 1000), speed_permille=rng.randint(700, 1300),
            rtt_ms=rtts,
        ))  # fmt: skip
    free = sum(n.free_gpus for n in nodes)
    jobs = []
    demand = 0
    i = 0
    while (load is None or demand < load * free) and len(jobs) < n_jobs:
        model = rng.choice((None, None, *(m for m, _, _ in MODELS)))
        nominal = max(p for m, _, p in MODELS if model in (None, m))
        memory = max(mem for m, mem, _ in MODELS if model in (None, m))
        asks = [a for a in MEMORY_ASKS if a <= memory or rng.random() < 0.1]
        need = rng.randint(1, max_gpus)
        k = rng.randint(1, max_k)
        sub, sub_region = rng.choice(submitters)
        jobs.append(JobRequest(
            job_id=_id("job", seed, i), submitter=sub, gpus_needed=need,
            min_memory_mib=rng.choice(asks), gpu_model=model,
            region=rng.choice(REGIONS) if rng.random() < 0.15 else None,
            max_rtt_ms=rng.choice((None, None, None, 80, 150, 250)), redundancy=k,
            max_price_per_gpu_hour=nominal * rng.randint(90, 250) // 100,
            submitter_region=sub_region,
        ))  # fmt: skip
        demand += need * k
        i += 1
    return jobs, nodes


def exact_optimum(
    jobs: list[JobRequest], nodes: list[NodeOffer], weights: ScoreWeights = DEFAULT_WEIGHTS
) -> int:
    """The least `total_cost` any valid schedule can reach."""
    if all(j.redundancy == 1 and j.gpus_needed == 1 for j in jobs):
        return _exact_assignment(jobs, nodes, weights)
    return _exact_milp(jobs, nodes, weights)


def _exact_assignment(jobs: list[JobRequest], nodes: list[NodeOffer], weights: ScoreWeights) -> int:
    from scipy.optimize import linear_sum_assignment

    slots = [n for n in nodes for _ in range(n.free_gpus)]
    big = weights.unassigned_penalty * 1_000
    matrix = np.full((len(jobs), len(slots) + len(jobs)), big, dtype=np.float64)
    for j, job in enumerate(jobs):
        matrix[j, len(slots) + j] = weights.unassigned_penalty
        col = 0
        for node in nodes:
            if fits(job, node, weights) is None:
                matrix[j, col : col + node.free_gpus] = cost(job, node, weights)
            col += node.free_gpus
    rows, cols = linear_sum_assignment(matrix)
    assert all(matrix[r, c] < big for r, c in zip(rows, cols, strict=True))
    return sum(int(matrix[r, c]) for r, c in zip(rows, cols, strict=True))


def _exact_milp(jobs: list[JobRequest], nodes: list[NodeOffer], weights: ScoreWeights) -> int:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    pairs = [(j, n) for j, job in enumerate(jobs) for n, node in enumerate(nodes)
             if fits(job, node, weights) is None]  # fmt: skip
    nx, ny = len(pairs), len(jobs)
    c = np.zeros(nx + ny)
    for v, (j, n) in enumerate(pairs):
        c[v] = cost(jobs[j], nodes[n], weights)
    for j, job in enumerate(jobs):  # y_j = 1 means "left out": pays the penalty per replica
        c[nx + j] = weights.unassigned_penalty * job.redundancy
    ops = sorted({(j, nodes[n].operator) for j, n in pairs})
    op_row = {key: r for r, key in enumerate(ops)}
    rows = ny + len(nodes) + len(ops)
    a = lil_matrix((rows, nx + ny))
    lo, hi = np.zeros(rows), np.zeros(rows)
    for v, (j, n) in enumerate(pairs):
        a[j, v] = 1  # sum_n x_jn + k*y_j == k
        a[ny + n, v] = jobs[j].gpus_needed  # capacity
        a[ny + len(nodes) + op_row[(j, nodes[n].operator)], v] = 1  # <= 1 per operator
    for j, job in enumerate(jobs):
        a[j, nx + j] = job.redundancy
        lo[j] = hi[j] = job.redundancy
    for n, node in enumerate(nodes):
        lo[ny + n], hi[ny + n] = 0, node.free_gpus
    for r in range(len(ops)):
        lo[ny + len(nodes) + r], hi[ny + len(nodes) + r] = 0, 1
    res = milp(c, constraints=LinearConstraint(a.tocsr(), lo, hi),
               integrality=np.ones(nx + ny), bounds=Bounds(0, 1),
               options={"time_limit": 60, "mip_rel_gap": 0})  # fmt: skip
    if res.x is None:
        raise RuntimeError(f"milp failed: {res.message}")
    return round(float(res.fun))


def quality_weights(jobs: list[JobRequest], nodes: list[NodeOffer]) -> ScoreWeights:
    """The default weights, with the penalty per unplaced replica set to twice the dearest
    fitting placement of the instance: high enough that placing beats leaving out, low enough
    that one job left out needlessly shows in the ratio as what it is (about two bad
    placements), instead of either drowning or dominating every other difference."""
    dearest = max((cost(j, n) for j in jobs for n in nodes if fits(j, n) is None), default=1)
    return replace(DEFAULT_WEIGHTS, unassigned_penalty=2 * dearest)


def quality(seed: int, n_jobs: int, n_nodes: int, simple: bool, load: float) -> dict[str, Any]:
    """Greedy against exact on one instance. Jobs no node could ever take are dropped first:
    every schedule leaves them out alike, so they would only dilute the ratio."""
    kw: dict[str, Any] = {"max_k": 1, "max_gpus": 1} if simple else {}
    jobs, nodes = random_instance(seed, n_jobs, n_nodes, load=load, **kw)
    jobs = [j for j in jobs if unfit_reason(j, nodes) is None]
    weights = quality_weights(jobs, nodes)
    assigned, unassigned = schedule(jobs, nodes, weights)
    greedy = total_cost(jobs, assigned, weights)
    started = time.perf_counter()
    best = exact_optimum(jobs, nodes, weights)
    return {
        "jobs": len(jobs), "requested_jobs": n_jobs, "nodes": n_nodes, "k1_one_gpu": simple,
        "load": load, "seed": seed,
        "greedy": greedy, "optimum": best, "ratio": round(greedy / best, 4) if best else 1.0,
        "unassigned": len(unassigned), "exact_s": round(time.perf_counter() - started, 2),
    }  # fmt: skip


@contextlib.contextmanager
def python_chain_search() -> Iterator[None]:
    """The scheduler as it was before its chain search was compiled: every search in Python
    (`_best_chain_py`, no array mirror) and charged one step per destination. It makes the
    very schedules the scheduler made then, so it is this benchmark's same-run baseline (it
    shares today's pause of the garbage collector during the call)."""
    plain = functools.partial(placement._best_chain, per_step=1, call_steps=0)
    saved = placement._best_chain, search._best_chain, placement._Placement.synced_mirror
    placement._best_chain = search._best_chain = plain  # type: ignore[assignment]
    placement._Placement.synced_mirror = lambda self, jobs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        placement._best_chain, search._best_chain = saved[0], saved[1]
        placement._Placement.synced_mirror = saved[2]  # type: ignore[method-assign]


def speed(seeds: int, n_jobs: int, n_nodes: int, repeats: int) -> dict[str, Any]:
    """Decision time per call, and the same calls with the Python chain search (the
    same-run baseline, `python_chain_search`), interleaved call by call so that both see
    the same machine. The compiled search is warmed up first, as a node does when it starts
    (loading it from numba's cache takes ~0.2 s, compiling it seconds)."""
    chain_kernel.warm_up()
    times: list[float] = []
    baseline: list[float] = []
    placed = placed_baseline = 0
    for seed in range(seeds):
        jobs, nodes = random_instance(1000 + seed, n_jobs, n_nodes, load=None)
        for _ in range(repeats):
            started = time.perf_counter()
            assigned, _ = schedule(jobs, nodes)
            times.append(time.perf_counter() - started)
            with python_chain_search():
                started = time.perf_counter()
                assigned_then, _ = schedule(jobs, nodes)
                baseline.append(time.perf_counter() - started)
        placed += len(assigned)
        placed_baseline += len(assigned_then)
    ms, base_ms = np.array(times) * 1000, np.array(baseline) * 1000
    p99 = float(np.percentile(ms, 99))
    return {
        "jobs": n_jobs, "nodes": n_nodes, "calls": len(times),
        "call_p50_ms": round(float(np.percentile(ms, 50)), 2), "call_p99_ms": round(p99, 2),
        "decisions_per_s": round(n_jobs * len(times) / float(ms.sum() / 1000)),
        "assigned_per_call": round(placed / seeds, 1),
        "p99_target_met": p99 <= P99_TARGET_MS,
        "baseline_python_chain_p50_ms": round(float(np.percentile(base_ms, 50)), 2),
        "baseline_python_chain_p99_ms": round(float(np.percentile(base_ms, 99)), 2),
        "baseline_assigned_per_call": round(placed_baseline / seeds, 1),
        "p50_ratio_to_baseline": round(
            float(np.percentile(ms, 50)) / float(np.percentile(base_ms, 50)), 3),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, help="quality seeds per size (10; --quick: 2)")
    parser.add_argument("--first-seed", type=int, default=0, help="first quality seed")
    args = parser.parse_args()
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.quick:
        sp = speed(seeds=2, n_jobs=1000, n_nodes=100, repeats=3)
        sizes = [(60, 20, True, 1.2), (30, 12, False, 0.9)]
        seeds = 2
    else:
        sp = speed(seeds=10, n_jobs=1000, n_nodes=100, repeats=20)
        sizes = [(60, 20, True, 1.2), (200, 50, True, 1.2), (1000, 100, True, 0.9),
                 (1000, 100, True, 1.5), (40, 15, False, 0.9), (120, 40, False, 1.2),
                 (300, 60, False, 0.9), (300, 60, False, 1.2)]  # fmt: skip
        seeds = 10
    print(f"speed {sp['jobs']} jobs x {sp['nodes']} nodes: p50 {sp['call_p50_ms']} ms, "
          f"p99 {sp['call_p99_ms']} ms per call, {sp['decisions_per_s']} decisions/s, "
          f"p99 <= {P99_TARGET_MS} ms: {'met' if sp['p99_target_met'] else 'NOT met'}; "
          f"same run with the Python chain search (as before it was compiled): p50 "
          f"{sp['baseline_python_chain_p50_ms']} ms, p99 {sp['baseline_python_chain_p99_ms']} ms, "
          f"{sp['baseline_assigned_per_call']} assigned per call (ratio of p50s "
          f"{sp['p50_ratio_to_baseline']})", flush=True)  # fmt: skip
    if args.seeds is not None:
        seeds = args.seeds
    runs = []
    for n_jobs, n_nodes, simple, load in sizes:
        for seed in range(args.first_seed, args.first_seed + seeds):
            r = quality(seed, n_jobs, n_nodes, simple, load)
            runs.append(r)
            print(f"quality {r['jobs']:>4} jobs x {n_nodes:>3} nodes "
                  f"{'k=1,1 GPU' if simple else 'k<=3,<=4 GPUs'} load {load}: "
                  f"ratio {r['ratio']} (unassigned {r['unassigned']}, exact {r['exact_s']} s)",
                  flush=True)  # fmt: skip
    print(f"{'size':<28} {'seeds':>5} {'worst':>7} {'mean':>7} {'> 5%':>5}")
    summary = []
    for n_jobs, n_nodes, simple, load in sizes:
        of = [r for r in runs if (r["k1_one_gpu"], r["load"]) == (simple, load)
              and r["nodes"] == n_nodes and r["requested_jobs"] == n_jobs]  # fmt: skip
        ratios = [r["ratio"] for r in of]
        row = {"jobs": n_jobs, "nodes": n_nodes, "k1_one_gpu": simple, "load": load,
               "seeds": len(of), "worst": max(ratios), "mean": round(float(np.mean(ratios)), 4),
               "over_target": sum(x > RATIO_TARGET for x in ratios)}  # fmt: skip
        summary.append(row)
        label = f"{n_jobs}x{n_nodes} {'k=1,1 GPU' if simple else 'k<=3,<=4 GPUs'} load {load}"
        print(f"{label:<28} {len(of):>5} {row['worst']:>7} {row['mean']:>7} "
              f"{row['over_target']:>5}")  # fmt: skip
    worst = max(r["ratio"] for r in runs)
    worst_k1 = max((r["ratio"] for r in runs if r["k1_one_gpu"]), default=None)
    worst_k3 = max((r["ratio"] for r in runs if not r["k1_one_gpu"]), default=None)
    met = worst <= RATIO_TARGET
    over = sum(r["ratio"] > RATIO_TARGET for r in runs)
    print(f"worst cost ratio {worst} (k=1, one GPU: {worst_k1}; k<=3, <=4 GPUs: {worst_k3}), "
          f"{over} of {len(runs)} instances over 5%: "
          f"within 5% of optimum: {'met' if met else 'NOT met'}")  # fmt: skip
    if args.json:
        print(json.dumps({"benchmark": "scheduler", "speed": sp, "quality": runs,
                          "quality_by_size": summary,
                          "worst_ratio": worst, "worst_ratio_k1": worst_k1,
                          "instances_over_target": over,
                          "worst_ratio_replicated": worst_k3, "ratio_target_met": met,
                          "p99_target_met": sp["p99_target_met"]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
