"""Simulator speed: 100, 1,000 and 10,000 nodes gossiping capacity every 10 s for 10 simulated
minutes, on one core.

Per size: simulated seconds per wall second, events per second, peak RSS, and gossip delivery
latency (p50/p99, simulated ms). Each size runs in its own process (so peak memory is its own)
under a wall-time budget: a run that hits the budget stops there and reports the speed it had
reached and how far it got, marked `completed: false`, never an extrapolated guess dressed as a
result. The 100-node run is the in-run baseline; larger sizes report their speed as a ratio of
it, and against the targets (>= 20x real time at 1,000 nodes, >= 1x at 10,000).

The same-run baseline runs the 1,000-node swarm (50 with --quick) twice over the same span:
as every size runs (honest gossip written into all books at once, `sim_harness.book_table`)
and with a core step per delivery (`per_delivery=True`, how the simulator ran before); it
reports both speeds, their ratio, and whether the two ended in the same final state.
"Deliveries" are first arrivals handed to a book, by either way.

    python bench/sim_speed.py                  # 100, 1000, 10000 nodes
    python bench/sim_speed.py --quick --json   # 50 nodes, 1 simulated minute (make test)
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from sim_harness.network import base_latency_ms
from sim_harness.scenario import Scenario, parse_scenario
from sim_harness.simulator import Simulator

TARGETS = {1_000: 20.0, 10_000: 1.0}
LIVENESS_S = 30
"""The heal-and-converge phase at the end of every run; the rest is the safety phase."""
CONTINENTS = {
    "eu": ["eu-west", "eu-central"],
    "us": ["us-east", "us-central"],
    "sa": ["sa-east"],
}
"""Regions whose cross-region one-way latencies span roughly 20-100 ms, as the target says."""


class BudgetExceeded(BaseException):
    """Raised by the wall-budget alarm. A BaseException, like KeyboardInterrupt: the
    simulator catches `Exception` around each core step (to record a crash and go on), and
    an alarm landing in a step must stop the run, not be recorded as a crash."""

    def __init__(self, sim_ms: int) -> None:
        super().__init__(f"wall budget exceeded at {sim_ms} simulated ms")
        self.sim_ms = sim_ms


def scenario_for(nodes: int, sim_s: int) -> Scenario:
    per = nodes // len(CONTINENTS)
    groups = []
    for i, (prefix, regions) in enumerate(CONTINENTS.items()):
        count = per + (nodes - per * len(CONTINENTS) if i == 0 else 0)
        groups.append({"prefix": prefix, "count": count, "regions": regions})
    raw = {
        "name": f"sim-speed-{nodes}",
        "seed": 1,
        "duration": f"{sim_s - LIVENESS_S}s",
        "liveness": f"{LIVENESS_S}s",
        "checkers": ["book_convergence", "no_crash_on_bad_input"],
        "network": {"mesh_degree": 6, "jitter": "5ms", "loss": 0.0},
        "gossip": {"announce_interval": "10s", "ttl": "60s"},
        "nodes": groups,
    }
    return parse_scenario(raw, f"<bench {nodes} nodes>")


def link_range_ms() -> tuple[int, int]:
    regions = [r for rs in CONTINENTS.values() for r in rs]
    cross = [base_latency_ms(a, b) for a in regions for b in regions if a != b]
    return min(cross), max(cross)


def run_one(nodes: int, sim_s: int, budget_s: float, per_delivery: bool = False) -> dict[str, Any]:
    """One size, in this process: the figures as a dict.

    The wall budget is enforced by SIGALRM, not only at progress callbacks: at 10,000 nodes a
    single simulated second can hold ~100M deliveries, so a check once per simulated second
    could overrun the budget by many minutes.
    """
    scenario = scenario_for(nodes, sim_s)
    started = time.perf_counter()
    reached = {"sim_ms": 0}

    def progress(now_ms: int, _end_ms: int) -> None:
        reached["sim_ms"] = now_ms

    def out_of_time(_signum: int, _frame: object) -> None:
        raise BudgetExceeded(reached["sim_ms"])

    signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        result = Simulator(scenario, seed=1, progress=progress, per_delivery=per_delivery).run()
    except BudgetExceeded as stop:
        wall = time.perf_counter() - started
        return {
            "nodes": nodes, "per_delivery": per_delivery, "completed": False,
            "sim_s": stop.sim_ms / 1000,
            "wall_s": round(wall, 2), "speedup": round(stop.sim_ms / 1000 / wall, 4),
            "peak_rss_mib": peak_rss_mib(),
        }  # fmt: skip
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    lat = np.array(result.metrics.delivery_latency_ms or [0])
    deliveries = result.metrics.messages.get("delivered", 0)
    return {
        "nodes": nodes,
        "per_delivery": per_delivery,
        "completed": True,
        "sim_s": result.sim_ms / 1000,
        "wall_s": round(result.wall_s, 2),
        "speedup": round(result.sim_ms / 1000 / result.wall_s, 2),
        "events": result.events,
        "events_per_s": round(result.events / result.wall_s),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / result.wall_s),
        "delivery_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "delivery_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "checkers_ok": result.ok,
        "state_sha256": result.state_sha256,
        "peak_rss_mib": peak_rss_mib(),
    }


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_isolated(
    nodes: int, sim_s: int, budget_s: float, per_delivery: bool = False
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        str(nodes),
        "--sim-s",
        str(sim_s),
        "--budget-s",
        str(budget_s),
    ] + (["--per-delivery"] if per_delivery else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=budget_s + 600)
    if out.returncode != 0:
        raise SystemExit(f"{nodes}-node run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--sim-s", type=int, default=600, help="simulated seconds per size")
    parser.add_argument("--budget-s", type=float, default=600.0, help="wall budget per size")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--baseline-sim-s",
        type=int,
        default=120,
        help="simulated seconds of the same-run baseline: the 1,000-node swarm (50 with "
        "--quick) with a core step per delivery, against the book table, over the same span",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--per-delivery", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("sim_s", "baseline_sim_s"):
        if getattr(args, name) <= LIVENESS_S:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must exceed the {LIVENESS_S} s liveness phase")
    if args.one:
        print(json.dumps(run_one(args.one, args.sim_s, args.budget_s, args.per_delivery)))
        return 0
    sizes = [50] if args.quick else [int(s) for s in args.sizes.split(",")]
    sim_s = 60 if args.quick else args.sim_s
    rows = []
    for nodes in sizes:
        print(
            f"sim speed: {nodes} nodes, {sim_s} simulated s (budget {args.budget_s:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        rows.append(run_isolated(nodes, sim_s, args.budget_s))
    base = rows[0]["speedup"]
    for r in rows:
        r["speed_ratio_to_smallest"] = round(r["speedup"] / base, 3) if base else None
        if r["nodes"] in TARGETS:
            r["target_speedup"] = TARGETS[r["nodes"]]
            r["meets_target"] = r["completed"] and r["speedup"] >= TARGETS[r["nodes"]]
    base_nodes = 50 if args.quick else 1_000
    base_s = min(sim_s, args.baseline_sim_s)
    print(
        f"baseline: {base_nodes} nodes, {base_s} simulated s, book table and per delivery",
        file=sys.stderr,
        flush=True,
    )
    pair = [run_isolated(base_nodes, base_s, args.budget_s, per) for per in (False, True)]
    baseline = {
        "nodes": base_nodes,
        "sim_s": base_s,
        "book_table_speedup": pair[0]["speedup"],
        "per_delivery_speedup": pair[1]["speedup"],
        "ratio": round(pair[0]["speedup"] / pair[1]["speedup"], 2) if pair[1]["speedup"] else None,
        "same_final_state": pair[0].get("state_sha256") == pair[1].get("state_sha256"),
    }
    lo, hi = link_range_ms()
    print(
        f"{'nodes':>6} {'done':>5} {'sim s':>6} {'wall s':>7} {'x real':>7} {'deliv/s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} {'vs smallest':>11}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>6} {r['completed']!s:>5} {r['sim_s']:>6.0f} {r['wall_s']:>7} "
            f"{r['speedup']:>7} {r.get('deliveries_per_s', '-')!s:>9} "
            f"{r.get('delivery_p50_ms', '-')!s:>7} {r.get('delivery_p99_ms', '-')!s:>7} "
            f"{r['peak_rss_mib']:>8} {r['speed_ratio_to_smallest']!s:>11}"
        )
    print(f"cross-region one-way link latency {lo}-{hi} ms (+ jitter)")
    print(
        f"same-run baseline, {base_nodes} nodes over {base_s} simulated s: book table "
        f"{baseline['book_table_speedup']}x real time, a core step per delivery "
        f"{baseline['per_delivery_speedup']}x: {baseline['ratio']}x faster"
        f"{'' if baseline['same_final_state'] else ' (final states DIFFER)'}"
    )
    if args.json:
        doc = {"benchmark": "sim_speed", "sim_s": sim_s, "link_ms": [lo, hi], "sizes": rows}
        print(json.dumps({**doc, "baseline": baseline}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
