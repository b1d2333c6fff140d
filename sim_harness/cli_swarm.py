"""`gpumesh swarm kill|restart|pause|resume|partition|heal|delay|run`: faults on a live swarm.

Each command acts on the swarm in `--dir`, records what it did in swarm.json (so
`gpumesh swarm status` shows it) and prints one line, or with `--json` one JSON object on
stdout. Unknown node names, nodes that are not running and malformed partitions are
`SwarmError`s, which `node.cli.main` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from sim_harness.swarm import Swarm, SwarmError, SwarmNode
from sim_harness.swarm_faults import PARTITION_HELP, parse_groups


def _console(as_json: bool) -> Console:
    """Human output; with --json it goes to stderr so stdout carries only the JSON."""
    return Console(stderr=as_json, width=None if Console().is_terminal else 110)


def _done(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        _console(False).print(text, highlight=False)
    return 0


def _node_json(node: SwarmNode) -> dict[str, Any]:
    return {"name": node.name, "peer_id": node.peer_id, "pid": node.pid, "paused": node.paused}


def cmd_swarm_kill(args: argparse.Namespace) -> int:
    node = Swarm.load(Path(args.dir)).faults.kill(args.node)
    return _done(args, _node_json(node), f"killed {node.name} (SIGKILL)")


def cmd_swarm_restart(args: argparse.Namespace) -> int:
    node = Swarm.load(Path(args.dir)).faults.restart(args.node, timeout_s=args.timeout)
    return _done(args, _node_json(node), f"restarted {node.name}: pid {node.pid}, ready")


def cmd_swarm_pause(args: argparse.Namespace) -> int:
    node = Swarm.load(Path(args.dir)).faults.pause(args.node)
    return _done(args, _node_json(node), f"paused {node.name} (SIGSTOP)")


def cmd_swarm_resume(args: argparse.Namespace) -> int:
    node = Swarm.load(Path(args.dir)).faults.resume(args.node)
    return _done(args, _node_json(node), f"resumed {node.name} (SIGCONT)")


def cmd_swarm_partition(args: argparse.Namespace) -> int:
    swarm = Swarm.load(Path(args.dir))
    changed = swarm.faults.partition(parse_groups(args.groups))
    names = {n.peer_id: n.name for n in swarm.nodes}
    data = {
        name: sorted(names.get(p, p) for p in policy.cut_off) for name, policy in changed.items()
    }
    left_out = [n.name for n in swarm.nodes if n.name not in changed]
    text = "\n".join(f"{name} cut off from {', '.join(peers)}" for name, peers in data.items())
    if left_out:
        text += f"\nnot named, unaffected: {', '.join(left_out)}"
    return _done(args, {"cut_off": data, "unaffected": left_out}, text)


def cmd_swarm_heal(args: argparse.Namespace) -> int:
    swarm = Swarm.load(Path(args.dir))
    applied = swarm.faults.heal()
    later = [n.name for n in swarm.nodes if n.name not in applied]
    text = f"healed {len(applied)} node(s): {', '.join(applied) or 'none running'}"
    if later:
        text += f"\nrecorded for {', '.join(later)} (down or paused): applied when they return"
    return _done(args, {"healed": applied, "pending": later}, text)


def cmd_swarm_delay(args: argparse.Namespace) -> int:
    if args.ms < 0:
        raise SwarmError(f"MS must be >= 0, got {args.ms}")
    swarm = Swarm.load(Path(args.dir))
    target = swarm.node(args.node)
    changed = swarm.faults.delay(target.name, args.ms)
    verb = f"hold what {target.name} sends for {args.ms} ms" if args.ms else "no longer delay"
    text = f"{len(changed)} node(s) {verb}" + ("" if args.ms else f" {target.name}")
    return _done(args, {"node": target.name, "delay_ms": args.ms, "nodes": changed}, text)


def cmd_swarm_run(args: argparse.Namespace) -> int:
    """Play a scenario live; exit 0 if every checker passed, 1 if one failed."""
    from sim_harness.live import LivePlayer
    from sim_harness.scenario import ScenarioError, load_scenario

    out = _console(args.json)
    try:
        scenario = load_scenario(Path(args.scenario))
    except ScenarioError as exc:
        raise SwarmError(str(exc)) from None

    def progress(elapsed_ms: int, total_ms: int, text: str) -> None:
        out.print(f"[{elapsed_ms / 1000:6.1f}s / {total_ms / 1000:.0f}s] {text}", highlight=False)

    player = LivePlayer(scenario, Path(args.dir), progress=progress)
    out.print(
        f"live: scenario {args.scenario}, {len(scenario.node_names)} nodes in {args.dir}, "
        f"{len(player.timeline)} planned fault(s)",
        highlight=False,
    )
    result = player.run()
    report = _write_report(result, args.report) if args.report else None
    for name, verdict in sorted(result.checkers.items()):
        out.print(f"{name}: {'ok' if verdict.ok else 'FAILED'}: {verdict.detail}", highlight=False)
    out.print(f"{'ok' if result.ok else 'FAILED'} in {result.wall_s:.1f} s", highlight=False)
    if report is not None:
        out.print(f"report: {report}", highlight=False)
    if args.json:
        doc = result.to_json()
        doc["report"] = str(report) if report is not None else None
        print(json.dumps(doc, sort_keys=True), flush=True)
    return 0 if result.ok else 1


def _write_report(result: Any, dir_text: str) -> Path:
    from sim_harness.report import write_report

    try:
        return write_report(result, Path(dir_text))
    except OSError as exc:
        raise SwarmError(f"cannot write the report to {dir_text}: {exc}") from None


def add_swarm_fault_commands(
    swarm: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register the fault subcommands under `gpumesh swarm`."""

    def command(
        name: str, help_text: str, func: Any, *, node: bool = True, folder: str = "swarm"
    ) -> Any:
        s = swarm.add_parser(name, help=help_text, description=help_text)
        if node:
            s.add_argument("node", metavar="NODE", help="node name (node-3) or peer-id suffix")
        s.add_argument("--dir", default=folder)
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=func)
        return s

    command("kill", "SIGKILL a node of the swarm (a crash: no clean shutdown)", cmd_swarm_kill)
    s = command(
        "restart",
        "stop a node if it runs, start it again (same ports and key), wait until ready",
        cmd_swarm_restart,
    )
    s.add_argument("--timeout", type=float, default=30.0)
    command("pause", "SIGSTOP a node: it hangs with its sockets open", cmd_swarm_pause)
    command("resume", "SIGCONT a paused node", cmd_swarm_resume)
    s = command(
        "partition",
        "cut groups of nodes off from each other: each named node refuses links to, and drops "
        "gossip from, every node of the other groups. Nodes not named are unaffected (and may "
        "still bridge the groups: name every node to split the swarm). `heal` lifts it.",
        cmd_swarm_partition,
        node=False,
    )
    s.add_argument("groups", metavar="GROUPS", help=PARTITION_HELP)
    command("heal", "lift every partition and delay on every node", cmd_swarm_heal, node=False)
    s = command(
        "delay",
        "make NODE slow: every other node holds what NODE originates for MS before delivering "
        "it, and delays its requests to NODE (MS = 0 removes the delay)",
        cmd_swarm_delay,
    )
    s.add_argument("ms", metavar="MS", type=int)
    s = command(
        "run",
        "play a scenario's fault timeline against a fresh swarm of real processes, then heal, "
        "check the supply views converge and write a report; the swarm is always torn down",
        cmd_swarm_run,
        node=False,
        folder="swarm-run",
    )
    s.add_argument("scenario", metavar="SCENARIO.toml")
    s.add_argument("--report", metavar="DIR", default=None, help="write the report here")
