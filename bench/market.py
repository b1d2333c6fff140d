"""The market under churn, cheaters and a month of failures (sim_harness/market_sim.py: the
real ledger, scheduler, commit-reveal, heartbeats and slashing; one block per simulated
second, every transaction signed).

- churn: 1,000 nodes, 10,000 jobs (2 replicas each), 20% of the nodes crash once at a
  random moment of the submission period and come back 10-60 s later. Job completion rate
  (target >= 99.9%) and reroute time, from a node's crash to its replica's replacement
  being assigned (target p99 <= 5 s). Baseline in the same run: the same seed without churn.
- cheaters: 200 nodes, 2,000 jobs, 5% each of wrong, lazy, liar, flaky and withholding nodes
  that undercut every honest price; how many faulty replicas were caught (penalised for a
  missed step, or outvoted: unpaid, slashed or struck), per behaviour,
  and that no honest node was slashed.
- soak: 30 days of 5-minute blocks, 20 nodes failing again and again (mean time between
  failures 2 days, outages 5-60 minutes), a job every 5 minutes: network availability (the
  share of minutes in which a job could be placed: at least 2 nodes up, target >= 99.9%),
  mean node uptime as the ledger measured it, completion rate.

    python bench/market.py                  # full run (several minutes)
    python bench/market.py --quick --json   # a smoke run of seconds (make test)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.ledger.params import MarketParams
from sim_harness.market_sim import BEHAVIOURS, MarketResult, MarketScenario, MarketSim

DAY_BLOCKS_5MIN = 24 * 12


def timed(scenario: MarketScenario, label: str, show: bool) -> tuple[MarketResult, float]:
    started = time.perf_counter()
    last = [0.0]

    def progress(height: int, total: int) -> None:
        now = time.perf_counter()
        if show and now - last[0] > 2:
            last[0] = now
            print(f"  {label}: block {height}/{total} ({now - started:.0f} s)", file=sys.stderr)

    result = MarketSim(scenario).run(progress)
    return result, time.perf_counter() - started


def churn(quick: bool, show: bool) -> dict[str, Any]:
    nodes, jobs = (100, 1_000) if quick else (1_000, 10_000)
    scenario = MarketScenario(seed=11, nodes=nodes, jobs=jobs, jobs_per_block=jobs // 100,
                              churn=0.2)  # fmt: skip
    result, wall = timed(scenario, "churn", show)
    base, base_wall = timed(replace(scenario, churn=0.0), "baseline", show)
    doc = result.to_json()
    return {
        **{
            k: doc[k]
            for k in (
                "nodes",
                "jobs",
                "blocks",
                "completion_rate",
                "reroutes",
                "reroute_p50_ms",
                "reroute_p99_ms",
                "failed",
                "expired",
                "honest_slashed",
                "node_uptime_percent",
                "problems",
            )
        },
        "wall_s": round(wall, 1),
        "baseline_completion_rate": base.to_json()["completion_rate"],
        "completion_vs_baseline": round(result.completion_rate / base.completion_rate, 6),
        "baseline_wall_s": round(base_wall, 1),
        "target_completion_met": result.completion_rate >= 0.999,
        "target_reroute_p99_met": (result.percentile_ms(99) or 0) <= 5_000,
    }


def cheaters(quick: bool, show: bool) -> dict[str, Any]:
    nodes, jobs = (40, 300) if quick else (200, 2_000)
    share = {b: 0.05 for b in BEHAVIOURS[1:]}
    scenario = MarketScenario(seed=12, nodes=nodes, jobs=jobs, jobs_per_block=max(5, jobs // 100),
                              behaviours=share)  # fmt: skip
    result, wall = timed(scenario, "cheaters", show)
    doc = result.to_json()
    rates = {b: round(c / s, 4) if s else None for b, (c, s) in result.caught.items()}
    return {
        **{
            k: doc[k]
            for k in (
                "nodes",
                "jobs",
                "completion_rate",
                "failed",
                "caught",
                "honest_slashed",
                "problems",
            )
        },
        "caught_rate": rates,
        "wall_s": round(wall, 1),
    }


def soak(quick: bool, show: bool) -> dict[str, Any]:
    days = 2 if quick else 30
    blocks = days * DAY_BLOCKS_5MIN
    scenario = MarketScenario(
        seed=13, nodes=20, jobs=blocks, jobs_per_block=1, block_ms=300_000,
        deadline_blocks=24, drain_blocks=40, mtbf_blocks=2 * DAY_BLOCKS_5MIN,
        outage_blocks=(1, 12), epoch_blocks=DAY_BLOCKS_5MIN,
        market=MarketParams(commit_window_blocks=6, reveal_window_blocks=2,
                            heartbeat_blocks=1, down_after_blocks=1),
    )  # fmt: skip
    result, wall = timed(scenario, "soak", show)
    doc = result.to_json()
    return {
        "days": round(result.blocks * 300 / 86_400, 2),
        **{
            k: doc[k]
            for k in (
                "nodes",
                "jobs",
                "completion_rate",
                "failed",
                "network_available_percent",
                "node_uptime_percent",
                "problems",
            )
        },
        "wall_s": round(wall, 1),
        "target_availability_met": result.available_percent >= 99.9,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    show = not args.json
    figures = {
        "benchmark": "market",
        "quick": args.quick,
        "churn": churn(args.quick, show),
        "cheaters": cheaters(args.quick, show),
        "soak": soak(args.quick, show),
    }
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        for name in ("churn", "cheaters", "soak"):
            print(f"{name}: " + json.dumps(figures[name], sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
