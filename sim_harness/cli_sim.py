"""`gpumesh sim run` and `gpumesh sim sweep`: the simulator from the command line.

Every run prints its seed before it starts and, when it fails, the one command that replays
it (DESIGN.md principle 10), so a red CI log is a reproducible bug report. Human output goes
to stdout; with `--json` it moves to stderr and stdout carries exactly one JSON object, on
one line, last, for scripts. Problems the user can fix (a missing or invalid scenario file, a
bad seed or seed range, an unwritable report folder) raise one of `SIM_USAGE_ERRORS`, which
`node.cli.main` prints as one line with exit code 2; a failed run exits 1.

Scenario, simulator and plotting modules are imported inside the commands, so `gpumesh`
starts quickly for everything else.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sim_harness.sweep import (
    SeedRangeError,
    SweepResult,
    parse_seed,
    parse_seed_range,
    replay_command,
)

if TYPE_CHECKING:
    from sim_harness.scenario import Scenario
    from sim_harness.simulator import SimResult

FAILURES_SHOWN_MAX = 50
"""Failed seeds listed in a sweep's table; --json lists them all."""
DETAIL_CHARS_MAX = 160


class SimUsageError(Exception):
    """A problem with the command's input the user can fix; one line, exit code 2."""


SIM_USAGE_ERRORS: tuple[type[Exception], ...] = (SimUsageError, SeedRangeError)


def _consoles(as_json: bool) -> tuple[Console, Console]:
    """(where human output goes, stderr): with --json, stdout is kept for the JSON alone."""
    err = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 110)
    if as_json:
        return err, err
    return Console(width=None if Console().is_terminal else 110), err


def _shown(args: argparse.Namespace, err: Console) -> bool:
    return not args.no_progress and (err.is_terminal or not args.json)


def load_checked(path_text: str) -> Scenario:
    """Load a scenario, turning "no such file" and ScenarioError into one-line usage errors."""
    from sim_harness.scenario import ScenarioError, load_scenario

    path = Path(path_text)
    if not path.is_file():
        raise SimUsageError(f"{path_text}: no such scenario file")
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        raise SimUsageError(str(exc)) from None


@contextmanager
def _bar(err: Console, show: bool, fmt: str) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(fmt),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
    )
    with progress:
        yield progress


def verdict_table(checkers: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("checker", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("detail")
    for name, v in sorted(checkers.items()):
        verdict = Text("ok", style="green") if v.ok else Text("FAILED", style="bold red")
        table.add_row(Text(name), verdict, Text(_cut(v.detail)))
    return table


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS_MAX else text[: DETAIL_CHARS_MAX - 1] + "\u2026"


def _line(console: Console, text: str) -> None:
    """Print verbatim: no markup, no highlighting, never wrapped (commands get copied)."""
    console.print(Text(text), soft_wrap=True, highlight=False)


# ---------------------------------------------------------------------------------------------
# sim run


def run_json(result: SimResult, report: Path | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "seed": result.seed,
        "scenario": result.scenario_name,
        "scenario_path": str(result.scenario_path),
        "nodes": result.nodes,
        "sim_seconds": result.sim_ms / 1000,
        "wall_seconds": round(result.wall_s, 3),
        "events": result.events,
        "trace_sha256": result.trace_sha256,
        "state_sha256": result.state_sha256,
        "checkers": {n: {"ok": v.ok, "detail": v.detail} for n, v in result.checkers.items()},
        "ok": result.ok,
        "replay": result.replay_command,
    }
    if report is not None:
        doc["report"] = str(report)
    return doc


def cmd_sim_run(args: argparse.Namespace) -> int:
    given = parse_seed(args.seed) if args.seed is not None else None
    scenario = load_checked(args.scenario)
    seed = scenario.seed if given is None else given
    from sim_harness.consensus_sim import simulator_for

    out, err = _consoles(args.json)
    _line(out, f"sim: scenario {args.scenario}, seed {seed}")
    with _bar(err, _shown(args, err), "{task.fields[sim]} simulated") as bar:
        task = bar.add_task("simulating", total=None, sim="0 s")

        def on_progress(now_ms: int, end_ms: int) -> None:
            sim = f"{now_ms / 1000:.0f}/{end_ms / 1000:.0f} s"
            bar.update(task, completed=now_ms, total=end_ms, sim=sim)

        extra = {"per_delivery": True} if args.per_delivery else {}
        if extra and scenario.consensus is not None:
            _line(err, "sim: --per-delivery applies to gossip scenarios, not consensus ones")
            return 2
        try:
            result = simulator_for(scenario, seed, progress=on_progress, **extra).run()
        except Exception:  # our bug: crash loudly, but leave the way back to it first
            _line(err, f"sim: seed {seed} crashed; replay: {replay_command(args.scenario, seed)}")
            raise
        bar.update(task, completed=result.sim_ms, total=result.sim_ms)
    report = _write_report(result, args.report, err) if args.report else None
    out.print(verdict_table(dict(result.checkers), f"{result.scenario_name}, seed {seed}"))
    _line(
        out,
        f"{result.nodes} nodes, {result.sim_ms / 1000:.1f} s simulated in "
        f"{result.wall_s:.2f} s, {result.events} events, trace {result.trace_sha256}",
    )
    if report is not None:
        _line(out, f"report: {report}")
    if not result.ok:
        failed = ", ".join(sorted(n for n, v in result.checkers.items() if not v.ok))
        _line(out, f"FAILED: {failed or 'no checker failed, yet the run is not ok'}")
        _line(out, f"replay: {result.replay_command}")
    if args.json:
        print(json.dumps(run_json(result, report), sort_keys=True), flush=True)
    return 0 if result.ok else 1


def _write_report(result: SimResult, dir_text: str, err: Console) -> Path:
    from sim_harness.report import write_report

    try:
        with err.status("writing report"):
            return write_report(result, Path(dir_text))
    except OSError as exc:
        raise SimUsageError(f"cannot write the report to {dir_text}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# sim sweep


def sweep_json(sweep: SweepResult, scenario_name: str, seed_text: str) -> dict[str, Any]:
    return {
        "scenario": scenario_name,
        "scenario_path": sweep.scenario_path,
        "seeds": len(sweep.outcomes),
        "seed_range": seed_text,
        "jobs": sweep.jobs,
        "wall_seconds": round(sweep.wall_s, 3),
        "failed": [
            {
                "seed": o.seed,
                "checkers": dict(o.failures),
                "replay": o.replay,
                "error": o.error,
                "trace_sha256": o.trace_sha256,
            }
            for o in sweep.failed
        ],
        "ok": sweep.ok,
    }


def failures_table(sweep: SweepResult) -> Table:
    table = Table(title=f"failed seeds ({len(sweep.failed)})")
    for col in ("seed", "checker", "detail"):
        table.add_column(col, no_wrap=col != "detail")
    for o in sweep.failed[:FAILURES_SHOWN_MAX]:
        if o.error is not None:
            last = o.error.strip().splitlines()[-1] if o.error.strip() else "?"
            table.add_row(str(o.seed), Text("exception", style="bold red"), Text(_cut(last)))
        for name, detail in o.failures:
            table.add_row(str(o.seed), Text(name, style="red"), Text(_cut(detail)))
    return table


def cmd_sim_sweep(args: argparse.Namespace) -> int:
    from sim_harness.sweep import run_sweep

    seeds = parse_seed_range(args.seeds)
    if args.jobs is not None and args.jobs < 1:
        raise SimUsageError(f"--jobs must be at least 1, got {args.jobs}")
    scenario = load_checked(args.scenario)  # here, not in N workers: one clear error
    out, err = _consoles(args.json)
    _line(out, f"sweep: scenario {args.scenario}, {len(seeds)} seeds ({args.seeds})")
    with _bar(err, _shown(args, err), "{task.completed}/{task.total}") as bar:
        task = bar.add_task("seeds", total=len(seeds))
        failed = 0

        def on_done(done: int, total: int, outcome: Any) -> None:
            nonlocal failed
            failed += 0 if outcome.ok else 1
            bar.update(task, completed=done, description=f"seeds ({failed} failed)")

        try:
            sweep = run_sweep(args.scenario, seeds, args.jobs, progress=on_done)
        except KeyboardInterrupt:
            _line(err, "sweep interrupted")
            return 130
    if sweep.failed:
        out.print(failures_table(sweep))
        _line(out, "replay:")
        for o in sweep.failed[:FAILURES_SHOWN_MAX]:
            _line(out, f"  {o.replay}")
    _line(
        out,
        f"{len(sweep.outcomes)} seeds, {len(sweep.failed)} failed "
        f"({sweep.wall_s:.1f} s on {sweep.jobs} processes)",
    )
    if args.json:
        print(json.dumps(sweep_json(sweep, scenario.name, args.seeds), sort_keys=True), flush=True)
    return 0 if sweep.ok else 1


# ---------------------------------------------------------------------------------------------
# parser


def add_sim_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `gpumesh sim run|sweep` to the CLI's top-level subparsers."""
    sim = subparsers.add_parser(
        "sim", help="deterministic simulation: run one seed, or sweep many"
    ).add_subparsers(dest="action", required=True)
    from sim_harness.cli_market import add_market_sim_command

    add_market_sim_command(sim)
    r = sim.add_parser("run", help="run a scenario under one seed; replays bit-for-bit")
    r.add_argument("scenario", metavar="SCENARIO.toml")
    r.add_argument("--seed", default=None, help="default: the scenario's own seed")
    r.add_argument("--report", metavar="DIR", help="write metrics.json, plots and index.html")
    r.add_argument("--json", action="store_true", help="print one JSON object last")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument(
        "--per-delivery",
        action="store_true",
        help="step a node's core for every gossip delivery (slow; one trace record each) "
        "instead of writing each message into every book at once",
    )
    r.set_defaults(func=cmd_sim_run)
    s = sim.add_parser("sweep", help="run a scenario under many seeds in parallel")
    s.add_argument("scenario", metavar="SCENARIO.toml")
    s.add_argument("--seeds", required=True, metavar="RANGE", help="e.g. 1-500, 1,2,7 or 5")
    s.add_argument("--jobs", type=int, default=None, help="processes (default: one per CPU)")
    s.add_argument("--json", action="store_true", help="print one JSON object last")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sim_sweep)
