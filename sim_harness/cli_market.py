"""`gpumesh sim market`: one seeded run of the market simulator (sim_harness/market_sim.py)
with a progress bar, a summary (completion, reroutes, catch rates, uptime) and, when a
checker fails, the exact command that replays the run."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sim_harness.market_sim import BEHAVIOURS, MarketResult, MarketScenario, MarketSim

console = Console(width=None if Console().is_terminal else 110)


def scenario_of(args: argparse.Namespace) -> MarketScenario:
    share = args.cheaters / (len(BEHAVIOURS) - 1)
    return MarketScenario(
        seed=args.seed, nodes=args.nodes, jobs=args.jobs, jobs_per_block=args.jobs_per_block,
        redundancy=args.redundancy, churn=args.churn,
        behaviours={b: share for b in BEHAVIOURS[1:]} if args.cheaters else {},
    )  # fmt: skip


def replay_command(args: argparse.Namespace) -> str:
    parts = ["gpumesh", "sim", "market", "--seed", str(args.seed), "--nodes", str(args.nodes),
             "--jobs", str(args.jobs), "--jobs-per-block", str(args.jobs_per_block),
             "--redundancy", str(args.redundancy), "--churn", str(args.churn),
             "--cheaters", str(args.cheaters)]  # fmt: skip
    return shlex.join(parts)


def cmd_sim_market(args: argparse.Namespace) -> int:
    try:
        scenario = scenario_of(args)
    except ValueError as exc:
        print(f"gpumesh: error: {exc}", file=sys.stderr)
        return 2
    err = Console(stderr=True)
    with Progress(
        TextColumn("[bold]blocks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, disable=args.json, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("blocks", total=None)
        result = MarketSim(scenario).run(lambda h, n: bar.update(task, completed=h, total=n))
    doc = result.to_json()
    if result.problems:
        doc["replay"] = replay_command(args)
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        console.print(summary(result))
        for problem in result.problems:
            console.print(f"[bold red]FAILED[/] {problem}", highlight=False)
        if result.problems:
            console.print(f"replay: {doc['replay']}", highlight=False)
    return 1 if result.problems else 0


def summary(result: MarketResult) -> Table:
    d = result.to_json()
    table = Table(title=f"market simulation, seed {d['seed']}: {d['nodes']} nodes, "
                        f"{d['jobs']} jobs, {d['simulated_s']:.0f} s simulated")  # fmt: skip
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("settled / failed / expired / open",
         f"{d['settled']} / {d['failed']} / {d['expired']} / {d['open']}"),
        ("completion rate", f"{100 * d['completion_rate']:.3f}%"),
        ("reroutes (p50 / p99)", f"{d['reroutes']} ({d['reroute_p50_ms']} / "
                                 f"{d['reroute_p99_ms']} ms)"),
        ("node uptime (ledger)", f"{d['node_uptime_percent']:.3f}%"),
        ("network available", f"{d['network_available_percent']:.3f}%"),
        ("honest nodes slashed", str(len(d["honest_slashed"]))),
        *((f"caught: {b}", f"{c['penalised']}/{c['seen']}") for b, c in d["caught"].items()),
        ("trace SHA-256", d["trace_sha256"][:32] + "..."),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    return table


def add_market_sim_command(sim: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sim.add_parser("market", help="simulate the market: churn, cheaters, checkers")
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--nodes", type=int, default=100)
    m.add_argument("--jobs", type=int, default=1_000)
    m.add_argument("--jobs-per-block", type=int, default=10)
    m.add_argument("--redundancy", type=int, default=2)
    m.add_argument("--churn", type=float, default=0.2, help="fraction of nodes that crash once")
    m.add_argument(
        "--cheaters",
        type=float,
        default=0.0,
        help=f"fraction of nodes misbehaving, split over {', '.join(BEHAVIOURS[1:])}",
    )
    m.add_argument("--json", action="store_true", help="print one JSON object last")
    m.set_defaults(func=cmd_sim_market)
