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
        surge=_surge(args.surge),
    )  # fmt: skip


def _surge(text: str | None) -> tuple[int, int, int]:
    if not text:
        return (0, 0, 0)
    try:
        first, last, rate = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--surge {text!r}: expected FIRST,LAST,JOBS_PER_BLOCK") from None
    if not 0 < first <= last or rate < 1:
        raise ValueError(f"--surge {text!r}: need 0 < FIRST <= LAST and JOBS_PER_BLOCK >= 1")
    return first, last, rate


def plot_prices(series: list[dict[str, int]], block_ms: int, surge: tuple[int, int, int],
                out: str) -> None:  # fmt: skip
    """Each GPU class's price over simulated time, the surge shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    seconds = [(h + 1) * block_ms / 1000 for h in range(len(series))]
    for name in sorted(series[-1] if series else {}):
        ax.plot(seconds, [s.get(name, 0) for s in series], label=name)
    if surge[2]:
        ax.axvspan(surge[0] * block_ms / 1000, surge[1] * block_ms / 1000, alpha=0.15,
                   label="demand surge")  # fmt: skip
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("price per GPU-hour (base units)")
    ax.set_title("GPU class prices (on chain, one bounded step per block)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def replay_command(args: argparse.Namespace) -> str:
    parts = ["gpumesh", "sim", "market", "--seed", str(args.seed), "--nodes", str(args.nodes),
             "--jobs", str(args.jobs), "--jobs-per-block", str(args.jobs_per_block),
             "--redundancy", str(args.redundancy), "--churn", str(args.churn),
             "--cheaters", str(args.cheaters)]  # fmt: skip
    if args.surge:
        parts += ["--surge", args.surge]
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
        sim = MarketSim(scenario)
        result = sim.run(lambda h, n: bar.update(task, completed=h, total=n))
    doc = result.to_json()
    peaks = {c: max(s.get(c, 0) for s in sim.price_series) for c in sim.price_series[-1]}
    doc["prices"] = {"final": sim.price_series[-1], "peak": peaks}
    if args.plot:
        plot_prices(sim.price_series, scenario.block_ms, scenario.surge, args.plot)
        doc["plot"] = args.plot
    if result.problems:
        doc["replay"] = replay_command(args)
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        console.print(summary(result))
        for name, peak in sorted(peaks.items()):
            console.print(f"price of {name}: peak {peak}, final {doc['prices']['final'][name]}",
                          highlight=False)  # fmt: skip
        if args.plot:
            console.print(f"price plot: {args.plot}")
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
        *((f"caught: {b}", f"{c['caught']}/{c['seen']}") for b, c in d["caught"].items()),
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
    m.add_argument(
        "--surge",
        default=None,
        metavar="FIRST,LAST,RATE",
        help="a demand surge: JOBS_PER_BLOCK from block FIRST to LAST",
    )
    m.add_argument("--plot", default=None, metavar="FILE.png", help="plot prices over time")
    m.add_argument("--json", action="store_true", help="print one JSON object last")
    m.set_defaults(func=cmd_sim_market)
