"""The `gpumesh` command line: keys, node, swarm, demo, tx, ledger, chain.

Every command that shows state has `--json` for scripts; errors the user can fix (bad config,
missing key, unreachable node) print one line naming the problem and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from node.capacity import CapacityError
from node.config import ConfigError
from p2p.keyfile import KeyFileError

EXIT_USAGE = 2
console = Console(width=None if Console().is_terminal else 110)


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# keys


def cmd_keys_new(args: argparse.Namespace) -> int:
    from p2p.identity import Identity
    from p2p.keyfile import write_key_file

    identity = Identity.generate()
    write_key_file(Path(args.out), identity, overwrite=args.force)
    return _emit(
        args,
        {
            "key_file": str(Path(args.out).resolve()),
            "peer_id": identity.peer_id,
            "public_key": identity.public_key.hex(),
        },
        f"wrote {args.out} (mode 0600)\npeer id: {identity.peer_id}",
    )


def cmd_keys_show(args: argparse.Namespace) -> int:
    from p2p.keyfile import load_key_file

    identity = load_key_file(Path(args.key))
    return _emit(
        args,
        {
            "key_file": str(Path(args.key).resolve()),
            "peer_id": identity.peer_id,
            "public_key": identity.public_key.hex(),
        },
        f"peer id:    {identity.peer_id}\npublic key: {identity.public_key.hex()}",
    )


# ---------------------------------------------------------------------------------------------
# node


def parse_gpu(text: str) -> Any:
    from p2p.announcements import GpuSpec

    try:
        model, count, mem = text.rsplit(":", 2)
        return GpuSpec(model, int(count), int(mem))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(
            f"--gpu expects MODEL:COUNT:MEMORY_MIB (e.g. 'RTX 4090:2:24564'), got {text!r}"
        ) from exc


def cmd_node_init(args: argparse.Namespace) -> int:
    from node.config import default_config, write_config
    from p2p.identity import Identity
    from p2p.keyfile import write_key_file

    home = Path(args.dir).resolve()
    config_path = home / "node.toml"
    if config_path.exists() and not args.force:
        raise CliError(f"{config_path} exists; pass --force to replace it")
    cfg = default_config(
        args.name,
        listen_port=args.listen_port,
        status_port=args.status_port,
        bootstrap=args.bootstrap,
        gpus=args.gpu,
        region=args.region,
        price_per_gpu_hour=args.price,
        base_dir=home,
    )
    identity = Identity.generate()
    write_key_file(home / "node.key", identity, overwrite=args.force)
    write_config(config_path, cfg)
    return _emit(
        args,
        {"config": str(config_path), "peer_id": identity.peer_id},
        f"wrote {config_path} and {home / 'node.key'}\npeer id: {identity.peer_id}\n"
        f"start it with: gpumesh node run --config {config_path}",
    )


def cmd_node_run(args: argparse.Namespace) -> int:
    import trio

    from node.capacity import detect_capacity
    from node.config import load_config
    from node.gc_pauses import freeze_start_up_objects
    from node.logs import configure_logging, log_event
    from node.runtime import NodeRuntime
    from p2p.keyfile import load_key_file

    cfg = load_config(Path(args.config))
    log = configure_logging(
        cfg.node.name, level=cfg.log.level, fmt=cfg.log.format, file=cfg.log.file
    )
    identity = load_key_file(cfg.node.key_file)
    capacity = detect_capacity(cfg.capacity.detect, cfg.capacity.gpus)
    runtime = NodeRuntime(cfg, identity, capacity)
    freeze_start_up_objects()  # see node/gc_pauses.py: full collections skip them from now

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                info = await nursery.start(runtime.run)
                line = info.to_json() + "\n"
                if args.ready_fd is not None:
                    os.write(args.ready_fd, line.encode())
                    os.close(args.ready_fd)
                else:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                async for signum in signals:
                    log_event(log, "signal_received", {"signal": signal.Signals(signum).name})
                    nursery.cancel_scope.cancel()
                    break
        log_event(log, "node_stopped", {"peer_id": identity.peer_id})

    trio.run(main)
    return 0


def _status_addr(args: argparse.Namespace) -> str:
    if args.status_addr:
        return str(args.status_addr)
    from node.config import load_config
    from node.runtime import RUNTIME_FILE

    cfg = load_config(Path(args.config))
    runtime_file = Path(cfg.node.data_dir) / RUNTIME_FILE
    if cfg.status.port:
        return f"{cfg.status.host}:{cfg.status.port}"
    try:
        return str(json.loads(runtime_file.read_text())["status_addr"])
    except FileNotFoundError:
        raise CliError(f"{runtime_file} not found: is the node running?") from None


def cmd_node_status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    addr = _status_addr(args)
    url = f"http://{addr}/status?wait_nodes={args.wait_nodes}&timeout_ms={int(args.timeout * 1000)}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout + 5) as resp:
            snap = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code != 408:
            raise CliError(f"status endpoint {addr} answered {exc.code}") from None
        snap = json.loads(exc.read())
    except OSError as exc:
        raise CliError(f"cannot reach the node's status endpoint at {addr}: {exc}") from None
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
        return 0
    supply = snap["supply"]
    console.print(
        f"[bold]{snap.get('name', '?')}[/] {snap['peer_id']}  region {snap['region']}  "
        f"peers {len(snap['peers'])}  GPUs seen {supply['gpus']} "
        f"({supply['free_gpus']} free) on {supply['nodes']} nodes"
    )
    console.print(supply_table(snap))
    return 0


def supply_table(snap: dict[str, Any]) -> Table:
    table = Table(title="supply view (live capacity announcements)")
    for col in ("node", "region", "GPUs", "free", "price/GPU-h", "load", "source", "age"):
        table.add_column(
            col,
            justify="right" if col in ("free", "load", "age") else "left",
            no_wrap=col != "GPUs",
        )
    for row in snap["announcements"]:
        gpus = ", ".join(f"{c}x {m} {round(mem / 1024)}G" for m, c, mem in row["gpus"]) or "-"
        table.add_row(
            row["peer_id"][-8:],
            row["region"],
            gpus,
            str(row["free_gpus"]),
            str(row["price_per_gpu_hour"]),
            f"{row['load_permille'] / 10:.0f}%",
            row["gpu_source"],
            f"{row['age_ms'] / 1000:.1f}s",
        )
    return table


# ---------------------------------------------------------------------------------------------
# swarm and demo


def cmd_swarm_up(args: argparse.Namespace) -> int:
    from sim_harness.swarm import Swarm, SwarmError, converged

    swarm = Swarm.create(Path(args.dir), args.nodes, chain=not args.no_chain)

    def ready(node: Any, info: dict[str, Any]) -> None:
        if not args.json:
            console.print(
                f"up {node.name} pid {info['pid']} peer {node.peer_id[-8:]}", highlight=False
            )

    try:
        swarm.start(timeout_s=args.timeout, on_ready=ready)
        with console.status("waiting until every node sees every other node"):
            statuses = swarm.wait_converged(timeout_s=args.timeout)
    except KeyboardInterrupt:
        console.print("interrupted: stopping the nodes started so far")
        swarm.stop()
        return 130
    except SwarmError:
        swarm.stop()
        raise
    ok = converged(statuses, len(swarm.nodes))
    _swarm_table(swarm, statuses, args)
    if not ok:
        raise CliError(
            f"the swarm did not converge within {args.timeout:.0f}s; it is still "
            f"running (see `gpumesh swarm status --dir {args.dir}`, logs in each "
            "node folder)"
        )
    return 0


def cmd_swarm_status(args: argparse.Namespace) -> int:
    from sim_harness.swarm import Swarm

    swarm = Swarm.load(Path(args.dir))
    _swarm_table(swarm, swarm.statuses(), args)
    return 0


def cmd_swarm_down(args: argparse.Namespace) -> int:
    from sim_harness.swarm import Swarm

    swarm = Swarm.load(Path(args.dir))
    stopped = swarm.stop()
    return _emit(
        args,
        {"stopped": stopped},
        f"stopped {len(stopped)} node(s): {', '.join(stopped) or 'none were running'}",
    )


def _swarm_table(swarm: Any, statuses: dict[str, Any], args: argparse.Namespace) -> None:
    if getattr(args, "json", False):
        rows = [
            {
                "name": n.name,
                "peer_id": n.peer_id,
                "pid": n.pid,
                "listen": n.listen_addr,
                "status_url": n.status_url,
                "status": statuses.get(n.name),
                "paused": n.paused,
                "policy": n.policy,
                "faults": swarm.faults.describe(n),
            }
            for n in swarm.nodes
        ]
        print(json.dumps({"dir": str(swarm.root), "nodes": rows}, indent=2, sort_keys=True))
        return
    table = Table(title=f"swarm in {swarm.root}")
    columns = (
        "node", "peer", "pid", "listen", "status", "peers", "nodes seen", "GPUs seen", "height",
    )  # fmt: skip
    for col in (*columns, "faults"):
        table.add_column(col)
    for n in swarm.nodes:
        s = statuses.get(n.name)
        state = (
            ("[green]up[/]" if s else "[red]unreachable[/]") if swarm.alive(n) else "[red]down[/]"
        )
        if n.paused and swarm.alive(n):
            state = "[yellow]paused[/]"
        supply = s["supply"] if s else {}
        chain = s.get("chain", {}) if s else {}
        table.add_row(
            n.name,
            n.peer_id[-8:],
            str(n.pid or "-"),
            f"127.0.0.1:{n.listen_port}",
            state,
            str(len(s["peers"])) if s else "-",
            str(supply.get("nodes", "-")),
            str(supply.get("gpus", "-")),
            str(chain.get("height", "-")),
            swarm.faults.describe(n) or "-",
        )
    console.print(table)


def cmd_demo(args: argparse.Namespace) -> int:
    from sim_harness.demo import run_demo

    return run_demo(Path(args.dir), args.nodes, timeout_s=args.timeout)


# ---------------------------------------------------------------------------------------------
# plumbing


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        console.print(text, highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpumesh", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="create or show an ed25519 node key").add_subparsers(
        dest="action", required=True
    )
    k = keys.add_parser("new", help="create a key file (mode 0600)")
    k.add_argument("--out", default="node.key")
    k.add_argument("--force", action="store_true", help="replace an existing key")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_new)
    k = keys.add_parser("show", help="print a key's peer id and public key (never the secret)")
    k.add_argument("--key", default="node.key")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_show)

    node = sub.add_parser("node", help="initialise, run and inspect a node").add_subparsers(
        dest="action", required=True
    )
    n = node.add_parser("init", help="write node.toml and node.key into --dir")
    n.add_argument("--dir", default=".")
    n.add_argument("--name", default="node-1")
    n.add_argument("--listen-port", type=int, default=4001)
    n.add_argument("--status-port", type=int, default=9101)
    n.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR")
    n.add_argument(
        "--gpu",
        action="append",
        type=parse_gpu,
        default=[],
        metavar="MODEL:COUNT:MIB",
        help="declare a GPU model (repeatable)",
    )
    n.add_argument("--region", default="eu-west")
    n.add_argument("--price", type=int, default=1_000_000, help="base units per GPU-hour")
    n.add_argument("--force", action="store_true")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_node_init)
    n = node.add_parser("run", help="run a node until SIGINT/SIGTERM")
    n.add_argument("--config", required=True)
    n.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    n.set_defaults(func=cmd_node_run)
    n = node.add_parser("status", help="show a running node's view (table or --json)")
    g = n.add_mutually_exclusive_group(required=True)
    g.add_argument("--config")
    g.add_argument("--status-addr", metavar="HOST:PORT")
    n.add_argument("--json", action="store_true")
    n.add_argument(
        "--wait-nodes",
        type=int,
        default=0,
        help="wait until the node sees this many nodes (or --timeout)",
    )
    n.add_argument("--timeout", type=float, default=10.0)
    n.set_defaults(func=cmd_node_status)

    swarm = sub.add_parser("swarm", help="a local swarm of real node processes").add_subparsers(
        dest="action", required=True
    )
    s = swarm.add_parser("up", help="create and start N nodes on 127.0.0.1")
    s.add_argument("-n", "--nodes", type=int, default=5)
    s.add_argument("--dir", default="swarm")
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument(
        "--no-chain", action="store_true", help="capacity gossip only: no genesis, no consensus"
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_swarm_up)
    s = swarm.add_parser("status", help="table of the swarm's nodes")
    s.add_argument("--dir", default="swarm")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_swarm_status)
    s = swarm.add_parser("down", help="stop every node of the swarm")
    s.add_argument("--dir", default="swarm")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_swarm_down)
    from sim_harness.cli_swarm import add_swarm_fault_commands

    add_swarm_fault_commands(swarm)

    d = sub.add_parser("demo", help="up a 5-node swarm, show the views converge, tear it down")
    d.add_argument("--nodes", type=int, default=5)
    d.add_argument("--dir", default="swarm-demo")
    d.add_argument("--timeout", type=float, default=45.0)
    d.set_defaults(func=cmd_demo)

    from sim_harness.cli_sim import add_sim_commands

    add_sim_commands(sub)
    from node.cli_chain import add_chain_commands
    from node.cli_job import add_job_commands

    add_chain_commands(sub)
    add_job_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from node.cli_chain_http import ChainCliError
    from node.store import StoreError
    from sim_harness.cli_sim import SIM_USAGE_ERRORS
    from sim_harness.swarm import SwarmError

    usage_errors: tuple[type[Exception], ...] = (
        CliError,
        ConfigError,
        KeyFileError,
        CapacityError,
        SwarmError,
        ChainCliError,
        StoreError,
        *SIM_USAGE_ERRORS,
    )
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except usage_errors as exc:
        print(f"gpumesh: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
