"""Jobs end to end on real node processes: throughput and assignment latency on a local swarm.

A 5-node swarm with a chain (real libp2p on 127.0.0.1, each node an operator whose offer its
JobRunner commits by itself) is started and awaited until every offer is on chain. Then N
jobs (matmul n=128, two replicas each, a mix of submitters) are submitted as
`gpumesh job submit` does, at once, and followed by polling one node's /jobs until every one
is closed. Per job: the wall time from submission to the first poll that sees it assigned
(assignment latency: one block plus forwarding, plus the poll interval of 50 ms) and to
settlement (the whole round: assignment, execution, commit, reveal, verdict, payment).
Figures: jobs settled per second over the run, p50/p99 of both latencies, blocks per second.
Baseline in the same run: the same swarm's latency for a single job on an idle network, so the
ratio shows what load costs.

Everything shares one machine (2 cores here): the nodes' workloads, consensus and the
generator compete for the same CPUs.

    python bench/jobs_live.py                  # 5 nodes, 100 jobs
    python bench/jobs_live.py --quick --json   # 3 nodes, 6 jobs (make test)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from node.cli_chain_http import NodeClient
from node.cli_job import FINAL, submit_job
from node.job_exec import encode_params
from node.workloads.matmul import MatmulParams
from p2p.keyfile import load_key_file
from sim_harness.swarm import LOOPBACK, Swarm
from sim_harness.swarm_genesis import USERS, user_key_path

POLL_S = 0.05


def terms(seed: int, height: int) -> dict[str, Any]:
    return dict(
        kind="matmul", params=encode_params(MatmulParams(n=128, seed=seed)), inputs=(),
        gpu_model="", min_memory_mib=0, gpus=1, region="", max_rtt_ms=0, redundancy=2,
        deadline_height=height + 1_000, max_price_per_gpu_hour=10**9, max_hours_milli=10,
    )  # fmt: skip


def run_jobs(client: NodeClient, users: list[Any], count: int, seed0: int,
             timeout_s: float) -> dict[str, Any]:  # fmt: skip
    nonces = {u.public_key: int((client.account(u.public_key) or {"nonce": 0})["nonce"])
              for u in users}  # fmt: skip
    height0 = int(client.chain_status()["height"])
    submitted: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(count):
        user = users[i % len(users)]
        doc = submit_job(client, user, terms(seed0 + i, height0), nonces[user.public_key])
        if not doc["accepted"]:
            raise SystemExit(f"job refused: {doc['code']}: {doc['reason']}")
        nonces[user.public_key] += 1
        submitted[doc["job_id"]] = time.perf_counter()
    assigned: dict[str, float] = {}
    closed: dict[str, tuple[float, str]] = {}
    deadline = started + timeout_s
    while len(closed) < count and time.perf_counter() < deadline:
        _, doc = client._call("/jobs")
        now = time.perf_counter()
        for j in doc["jobs"]:
            job = j["job_id"]
            if job not in submitted:
                continue
            if j["replicas"] and job not in assigned:
                assigned[job] = now
            if j["status"] in FINAL and job not in closed:
                closed[job] = (now, j["status"])
        time.sleep(POLL_S)
    elapsed = time.perf_counter() - started
    height1 = int(client.chain_status()["height"])
    assign_ms = np.array([1000 * (assigned[j] - submitted[j]) for j in assigned])
    settle_ms = np.array([1000 * (t - submitted[j]) for j, (t, s) in closed.items()
                          if s == "settled"])  # fmt: skip
    settled = int(settle_ms.size)

    def pct(a: Any, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 1) if a.size else None

    return {
        "jobs": count,
        "settled": settled,
        "not_settled": count - settled,
        "wall_s": round(elapsed, 2),
        "jobs_per_s": round(settled / elapsed, 2),
        "assign_p50_ms": pct(assign_ms, 50),
        "assign_p99_ms": pct(assign_ms, 99),
        "settle_p50_ms": pct(settle_ms, 50),
        "settle_p99_ms": pct(settle_ms, 99),
        "blocks_per_s": round((height1 - height0) / elapsed, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    nodes = args.nodes or (3 if args.quick else 5)
    count = args.jobs or (6 if args.quick else 100)
    with tempfile.TemporaryDirectory(prefix="gpumesh-jobs-") as tmp:
        swarm = Swarm.create(Path(tmp) / "swarm", nodes, chain=True, empty_block_ms=300,
                             chain_id="gpumesh-bench-jobs")  # fmt: skip
        try:
            swarm.start(timeout_s=60)
            client = NodeClient(f"http://{LOOPBACK}:{swarm.nodes[0].status_port}")
            deadline = time.monotonic() + 60
            while len(client._call("/offers")[1]["offers"]) < nodes:
                if time.monotonic() > deadline:
                    raise SystemExit("offers were not committed within 60 s")
                time.sleep(0.2)
            users = [load_key_file(user_key_path(swarm.root, i)) for i in range(USERS)]
            baseline = run_jobs(client, users, 1, 10_000, 60)
            loaded = run_jobs(client, users, count, 0, 120 + 2 * count)
        finally:
            swarm.stop()
    figures = {
        "benchmark": "jobs_live",
        "nodes": nodes,
        "loaded": loaded,
        "idle_single_job": baseline,
        "settle_p50_vs_idle": (
            round(loaded["settle_p50_ms"] / baseline["settle_p50_ms"], 2)
            if loaded["settle_p50_ms"] and baseline["settle_p50_ms"] else None
        ),
    }  # fmt: skip
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print(json.dumps(figures, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
