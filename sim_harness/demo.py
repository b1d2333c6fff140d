"""`gpumesh demo` / `make demo`: a real swarm on this machine, end to end, in under a minute.

Starts N node processes with different GPU inventories and regions, shows each one come up,
waits until every node's supply view holds every node's signed announcement, prints those
views side by side (they must agree), then runs twenty real jobs through the market
(`demo_jobs`: assigned, executed, verified, paid, tiles stitched into one image), and tears
the swarm down whatever happens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sim_harness.swarm import Swarm, SwarmNode, converged

console = Console(width=None if Console().is_terminal else 110)


def run_demo(root: Path, count: int, *, timeout_s: float = 45.0) -> int:
    console.rule(f"[bold]gpumesh demo: a swarm of {count} real nodes on 127.0.0.1")
    started = time.monotonic()
    swarm = Swarm.create(root, count, chain=True)
    try:

        def ready(node: SwarmNode, info: dict[str, Any]) -> None:
            console.print(
                f"  [green]up[/] {node.name}  peer {node.peer_id[-8:]}  "
                f"pid {info['pid']}  listen 127.0.0.1:{node.listen_port}  "
                f"status {info['status_addr']}"
            )

        swarm.start(timeout_s=timeout_s, on_ready=ready)
        up_s = time.monotonic() - started
        with console.status("gossiping capacity announcements until every view is complete"):
            statuses = swarm.wait_converged(timeout_s=timeout_s)
        converge_s = time.monotonic() - started
        ok = converged(statuses, count)
        console.print(_views_table(statuses))
        first: dict[str, Any] | None = next((s for s in statuses.values() if s), None)
        if first is not None:
            from node.cli import supply_table

            console.print(supply_table(first))
            by_model = sorted(first["supply"]["gpus_by_model"].items())
            console.print("GPUs by model: " + ", ".join(f"{c}x {m}" for m, c in by_model))
        totals = {_totals_key(s) for s in statuses.values() if s}
        agree = ok and len(totals) == 1
        if agree:
            console.print(
                f"[bold green]converged[/]: every node sees all {count} announcements "
                f"and the same supply; nodes up in {up_s:.1f}s, views complete "
                f"{converge_s:.1f}s after start"
            )
        else:
            console.print(
                f"[bold red]not converged[/] within {timeout_s:.0f}s; logs are in "
                f"{swarm.root}/node-*/node.log"
            )
        if not agree:
            return 1
        from sim_harness.demo_jobs import run_market_demo

        return 0 if run_market_demo(swarm, console, timeout_s=max(timeout_s, 120.0)) else 1
    finally:
        stopped = swarm.stop()
        console.print(
            f"swarm down: stopped {len(stopped)} node(s) in {time.monotonic() - started:.1f}s total"
        )


def _totals_key(status: dict[str, Any]) -> tuple[int, int, tuple[tuple[str, int], ...]]:
    supply = status["supply"]
    return supply["nodes"], supply["gpus"], tuple(sorted(supply["gpus_by_model"].items()))


def _views_table(statuses: dict[str, Any]) -> Table:
    table = Table(title="each node's view of supply")
    for col in ("node", "region", "peers", "announcements", "GPUs seen", "free", "models seen"):
        table.add_column(col, no_wrap=True)
    for name, s in statuses.items():
        if s is None:
            table.add_row(name, "-", "-", "[red]unreachable[/]", "-", "-", "-")
            continue
        supply = s["supply"]
        table.add_row(
            name,
            s["region"],
            str(len(s["peers"])),
            str(supply["nodes"]),
            str(supply["gpus"]),
            str(supply["free_gpus"]),
            str(len(supply["gpus_by_model"])),
        )
    return table
